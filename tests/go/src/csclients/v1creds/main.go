// v1creds resolves AWS credentials with Debian's aws-sdk-go (v1) and prints them as JSON.
//
//	v1creds -provider chain|imds|container|process [-s3-endpoint URL -bucket B [-key K]]
//
// chain:     session.NewSessionWithOptions(SharedConfigEnable): env, shared config
//
//	(credential_process), AWS_CONTAINER_CREDENTIALS_FULL_URI, IMDS.
//
// imds:      ec2rolecreds with an ec2metadata client (-imds-endpoint, else the session's
//
//	AWS_EC2_METADATA_SERVICE_ENDPOINT, else 169.254.169.254).
//
// container: endpointcreds on AWS_CONTAINER_CREDENTIALS_FULL_URI; the token from
//
//	AWS_CONTAINER_AUTHORIZATION_TOKEN or, read by this program (the SDK cannot),
//	AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.
//
// process:   processcreds running -command.
package main

import (
	"bytes"
	"context"
	"io"

	"csclients/common"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go/aws/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go/aws/credentials/processcreds"
	"github.com/aws/aws-sdk-go/aws/ec2metadata"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

const sdkVersion = "aws-sdk-go " + aws.SDKVersion

// s3Client is aws-sdk-go's S3 client behind common.S3Client.
type s3Client struct{ *s3.S3 }

func (c s3Client) ListBuckets(ctx context.Context) ([]string, error) {
	listed, err := c.ListBucketsWithContext(ctx, &s3.ListBucketsInput{})
	if err != nil {
		return nil, err
	}
	names := []string{}
	for _, b := range listed.Buckets {
		names = append(names, aws.StringValue(b.Name))
	}
	return names, nil
}

func (c s3Client) PutObject(ctx context.Context, bucket, key string, body []byte) (string, error) {
	put, err := c.PutObjectWithContext(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(body),
	})
	if err != nil {
		return "", err
	}
	return aws.StringValue(put.ETag), nil
}

func (c s3Client) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, error) {
	got, err := c.GetObjectWithContext(ctx, &s3.GetObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key),
	})
	if err != nil {
		return nil, err
	}
	return got.Body, nil
}

func main() {
	run, ctx, cancel := common.Start(sdkVersion, "go-v1-object.txt")
	defer cancel()

	sess, err := session.NewSessionWithOptions(session.Options{
		Config:            aws.Config{CredentialsChainVerboseErrors: aws.Bool(true)},
		SharedConfigState: session.SharedConfigEnable,
		EC2IMDSEndpoint:   run.IMDSEndpoint,
	})
	run.FailOn("session", err)
	if run.Region != "" {
		sess.Config.Region = aws.String(run.Region)
	}
	if aws.StringValue(sess.Config.Region) == "" {
		sess.Config.Region = aws.String("us-east-1")
	}

	var meta *ec2metadata.EC2Metadata
	newIMDS := func() *ec2metadata.EC2Metadata {
		if meta == nil {
			cfg := aws.NewConfig()
			if run.IMDSEndpoint != "" {
				cfg = cfg.WithEndpoint(run.IMDSEndpoint)
			}
			meta = ec2metadata.New(sess, cfg)
		}
		return meta
	}

	var creds *credentials.Credentials
	switch run.Provider {
	case "chain":
		creds = sess.Config.Credentials
	case "imds":
		creds = ec2rolecreds.NewCredentialsWithClient(newIMDS())
	case "container":
		uri, tok := run.ContainerEndpoint()
		creds = endpointcreds.NewCredentialsClient(*sess.Config, sess.Handlers, uri,
			func(p *endpointcreds.Provider) { p.AuthorizationToken = tok })
	case "process":
		creds = processcreds.NewCredentials(run.ProcessCommand())
	default:
		run.UnknownProvider()
	}

	value, err := creds.GetWithContext(ctx)
	run.FailOn("retrieve", err)
	run.Credentials(value.ProviderName, value.AccessKeyID, value.SecretAccessKey, value.SessionToken)
	if expires, eerr := creds.ExpiresAt(); eerr == nil {
		run.Expires(expires)
	} else {
		run.Out.ExpiresError = eerr.Error()
	}

	if run.IMDSExtras {
		reg, rerr := newIMDS().RegionWithContext(ctx)
		run.FailOn("imds-region", rerr)
		run.Out.Region = reg
		doc, derr := newIMDS().GetInstanceIdentityDocumentWithContext(ctx)
		run.FailOn("imds-identity-document", derr)
		run.IdentityDocument(doc)
	}

	if run.S3Endpoint != "" {
		client := s3.New(sess, &aws.Config{
			Credentials:      creds,
			Endpoint:         aws.String(run.S3Endpoint),
			S3ForcePathStyle: aws.Bool(true),
		})
		run.S3RoundTrip(ctx, s3Client{client}, value.AccessKeyID)
	}

	run.Print()
}

// v2creds resolves AWS credentials with Debian's aws-sdk-go-v2 and prints them as JSON.
//
//	v2creds -provider chain|imds|container|process [-s3-endpoint URL -bucket B [-key K]]
//
// chain:     config.LoadDefaultConfig, as most programs do (env, shared config, container, IMDS).
// imds:      ec2rolecreds with an imds client (-imds-endpoint, else AWS_EC2_METADATA_SERVICE_ENDPOINT).
// container: endpointcreds on AWS_CONTAINER_CREDENTIALS_FULL_URI; the token from
//
//	AWS_CONTAINER_AUTHORIZATION_TOKEN or, read by this program (the SDK cannot),
//	AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.
//
// process:   processcreds running -command (else the active profile's credential_process via chain).
package main

import (
	"bytes"
	"context"
	"errors"
	"io"

	"csclients/common"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

const sdkVersion = "aws-sdk-go-v2 " + aws.SDKVersion

// s3Client is aws-sdk-go-v2's S3 client behind common.S3Client.
type s3Client struct{ *s3.Client }

func (c s3Client) ListBuckets(ctx context.Context) ([]string, error) {
	listed, err := c.Client.ListBuckets(ctx, &s3.ListBucketsInput{})
	if err != nil {
		return nil, err
	}
	names := []string{}
	for _, b := range listed.Buckets {
		names = append(names, aws.ToString(b.Name))
	}
	return names, nil
}

func (c s3Client) PutObject(ctx context.Context, bucket, key string, body []byte) (string, error) {
	put, err := c.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(body),
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(put.ETag), nil
}

func (c s3Client) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, error) {
	got, err := c.Client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key),
	})
	if err != nil {
		return nil, err
	}
	return got.Body, nil
}

func main() {
	run, ctx, cancel := common.Start(sdkVersion, "go-v2-object.txt")
	defer cancel()

	cfg, err := config.LoadDefaultConfig(ctx)
	run.FailOn("load-config", err)
	if run.Region != "" {
		cfg.Region = run.Region
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}

	var imdsClient *imds.Client
	newIMDS := func() *imds.Client {
		if imdsClient == nil {
			imdsClient = imds.New(imds.Options{Endpoint: run.IMDSEndpoint})
		}
		return imdsClient
	}

	switch run.Provider {
	case "chain":
		// cfg.Credentials as resolved by LoadDefaultConfig
	case "imds":
		cfg.Credentials = aws.NewCredentialsCache(ec2rolecreds.New(func(o *ec2rolecreds.Options) {
			o.Client = newIMDS()
		}))
	case "container":
		uri, tok := run.ContainerEndpoint()
		cfg.Credentials = aws.NewCredentialsCache(endpointcreds.New(uri, func(o *endpointcreds.Options) {
			o.AuthorizationToken = tok
		}))
	case "process":
		cfg.Credentials = aws.NewCredentialsCache(processcreds.NewProvider(run.ProcessCommand()))
	default:
		run.UnknownProvider()
	}

	if cfg.Credentials == nil {
		run.Fail("retrieve", errors.New("no credentials provider resolved"))
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	run.FailOn("retrieve", err)
	run.Credentials(creds.Source, creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken)
	if creds.CanExpire {
		run.Expires(creds.Expires)
	}

	if run.IMDSExtras {
		reg, rerr := newIMDS().GetRegion(ctx, &imds.GetRegionInput{})
		run.FailOn("imds-region", rerr)
		run.Out.Region = reg.Region
		doc, derr := newIMDS().GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
		run.FailOn("imds-identity-document", derr)
		run.IdentityDocument(doc.InstanceIdentityDocument)
	}

	if run.S3Endpoint != "" {
		client := s3.NewFromConfig(cfg, func(o *s3.Options) {
			o.EndpointResolver = s3.EndpointResolverFromURL(run.S3Endpoint)
			o.UsePathStyle = true
		})
		run.S3RoundTrip(ctx, s3Client{client}, creds.AccessKeyID)
	}

	run.Print()
}

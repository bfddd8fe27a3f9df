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
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

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

type s3Result struct {
	Endpoint string   `json:"endpoint"`
	Buckets  []string `json:"buckets"`
	PutKey   string   `json:"put_key,omitempty"`
	PutETag  string   `json:"put_etag,omitempty"`
}

type output struct {
	SDK             string         `json:"sdk"`
	Provider        string         `json:"provider"`
	Source          string         `json:"source"`
	AccessKeyID     string         `json:"access_key_id"`
	SecretAccessKey string         `json:"secret_access_key"`
	SessionToken    string         `json:"session_token"`
	CanExpire       bool           `json:"can_expire"`
	Expires         string         `json:"expires,omitempty"`
	ExpiresError    string         `json:"expires_error,omitempty"`
	TokenFrom       string         `json:"token_from,omitempty"`
	Region          string         `json:"region,omitempty"`
	IdentityDoc     map[string]any `json:"identity_document,omitempty"`
	S3              *s3Result      `json:"s3,omitempty"`
}

func fail(stage string, err error) {
	enc := json.NewEncoder(os.Stdout)
	_ = enc.Encode(map[string]string{"error": err.Error(), "stage": stage, "sdk": sdkVersion})
	os.Exit(2)
}

func containerToken() (string, string, error) {
	if tok := os.Getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN"); tok != "" {
		return tok, "env", nil
	}
	if path := os.Getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return "", "", err
		}
		return strings.TrimSpace(string(data)), "file (read by the program)", nil
	}
	return "", "none", nil
}

func main() {
	provider := flag.String("provider", "chain", "chain|imds|container|process")
	imdsEndpoint := flag.String("imds-endpoint", "", "IMDS endpoint (default: env or 169.254.169.254)")
	imdsExtras := flag.Bool("imds-extras", false, "also read placement/region and the identity document")
	command := flag.String("command", "", "credential_process command for -provider process")
	region := flag.String("region", "", "region for S3 (default: config/env, else us-east-1)")
	s3Endpoint := flag.String("s3-endpoint", "", "S3 endpoint override (path-style)")
	bucket := flag.String("bucket", "", "bucket for PutObject (needs -s3-endpoint)")
	key := flag.String("key", "go-v1-object.txt", "key for PutObject")
	timeout := flag.Duration("timeout", 30*time.Second, "overall timeout")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	sess, err := session.NewSessionWithOptions(session.Options{
		Config:            aws.Config{CredentialsChainVerboseErrors: aws.Bool(true)},
		SharedConfigState: session.SharedConfigEnable,
		EC2IMDSEndpoint:   *imdsEndpoint,
	})
	if err != nil {
		fail("session", err)
	}
	if *region != "" {
		sess.Config.Region = aws.String(*region)
	}
	if aws.StringValue(sess.Config.Region) == "" {
		sess.Config.Region = aws.String("us-east-1")
	}
	out := output{SDK: sdkVersion, Provider: *provider}

	var meta *ec2metadata.EC2Metadata
	newIMDS := func() *ec2metadata.EC2Metadata {
		if meta == nil {
			cfg := aws.NewConfig()
			if *imdsEndpoint != "" {
				cfg = cfg.WithEndpoint(*imdsEndpoint)
			}
			meta = ec2metadata.New(sess, cfg)
		}
		return meta
	}

	var creds *credentials.Credentials
	switch *provider {
	case "chain":
		creds = sess.Config.Credentials
	case "imds":
		creds = ec2rolecreds.NewCredentialsWithClient(newIMDS())
	case "container":
		uri := os.Getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
		if uri == "" {
			fail("container", errors.New("AWS_CONTAINER_CREDENTIALS_FULL_URI is not set"))
		}
		tok, from, terr := containerToken()
		if terr != nil {
			fail("container-token", terr)
		}
		out.TokenFrom = from
		creds = endpointcreds.NewCredentialsClient(*sess.Config, sess.Handlers, uri,
			func(p *endpointcreds.Provider) { p.AuthorizationToken = tok })
	case "process":
		if *command == "" {
			fail("process", errors.New("-command is required"))
		}
		creds = processcreds.NewCredentials(*command)
	default:
		fail("flags", fmt.Errorf("unknown provider %q", *provider))
	}

	value, err := creds.GetWithContext(ctx)
	if err != nil {
		fail("retrieve", err)
	}
	out.Source = value.ProviderName
	out.AccessKeyID = value.AccessKeyID
	out.SecretAccessKey = value.SecretAccessKey
	out.SessionToken = value.SessionToken
	if expires, eerr := creds.ExpiresAt(); eerr == nil {
		out.CanExpire = true
		out.Expires = expires.UTC().Format(time.RFC3339)
	} else {
		out.ExpiresError = eerr.Error()
	}

	if *imdsExtras {
		reg, rerr := newIMDS().RegionWithContext(ctx)
		if rerr != nil {
			fail("imds-region", rerr)
		}
		out.Region = reg
		doc, derr := newIMDS().GetInstanceIdentityDocumentWithContext(ctx)
		if derr != nil {
			fail("imds-identity-document", derr)
		}
		raw, _ := json.Marshal(doc)
		_ = json.Unmarshal(raw, &out.IdentityDoc)
	}

	if *s3Endpoint != "" {
		client := s3.New(sess, &aws.Config{
			Credentials:      creds,
			Endpoint:         aws.String(*s3Endpoint),
			S3ForcePathStyle: aws.Bool(true),
		})
		res := &s3Result{Endpoint: *s3Endpoint, Buckets: []string{}}
		listed, lerr := client.ListBucketsWithContext(ctx, &s3.ListBucketsInput{})
		if lerr != nil {
			fail("s3-list-buckets", lerr)
		}
		for _, b := range listed.Buckets {
			res.Buckets = append(res.Buckets, aws.StringValue(b.Name))
		}
		if *bucket != "" {
			body := []byte("written by " + sdkVersion + " with " + value.AccessKeyID + "\n")
			put, perr := client.PutObjectWithContext(ctx, &s3.PutObjectInput{
				Bucket: bucket, Key: key, Body: bytes.NewReader(body),
			})
			if perr != nil {
				fail("s3-put-object", perr)
			}
			res.PutKey = *key
			res.PutETag = aws.StringValue(put.ETag)
			got, gerr := client.GetObjectWithContext(ctx, &s3.GetObjectInput{Bucket: bucket, Key: key})
			if gerr != nil {
				fail("s3-get-object", gerr)
			}
			data, _ := io.ReadAll(got.Body)
			_ = got.Body.Close()
			if !bytes.Equal(data, body) {
				fail("s3-get-object", errors.New("object read back differs"))
			}
		}
		out.S3 = res
	}

	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("encode", err)
	}
}

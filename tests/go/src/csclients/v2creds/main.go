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
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go-v2/credentials/processcreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

const sdkVersion = "aws-sdk-go-v2 " + aws.SDKVersion

type s3Result struct {
	Endpoint string   `json:"endpoint"`
	Buckets  []string `json:"buckets"`
	PutKey   string   `json:"put_key,omitempty"`
	PutETag  string   `json:"put_etag,omitempty"`
}

type output struct {
	SDK             string            `json:"sdk"`
	Provider        string            `json:"provider"`
	Source          string            `json:"source"`
	AccessKeyID     string            `json:"access_key_id"`
	SecretAccessKey string            `json:"secret_access_key"`
	SessionToken    string            `json:"session_token"`
	CanExpire       bool              `json:"can_expire"`
	Expires         string            `json:"expires,omitempty"`
	TokenFrom       string            `json:"token_from,omitempty"`
	Region          string            `json:"region,omitempty"`
	IdentityDoc     map[string]any    `json:"identity_document,omitempty"`
	S3              *s3Result         `json:"s3,omitempty"`
	Extra           map[string]string `json:"extra,omitempty"`
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
	key := flag.String("key", "go-v2-object.txt", "key for PutObject")
	timeout := flag.Duration("timeout", 30*time.Second, "overall timeout")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fail("load-config", err)
	}
	if *region != "" {
		cfg.Region = *region
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	out := output{SDK: sdkVersion, Provider: *provider}

	var imdsClient *imds.Client
	newIMDS := func() *imds.Client {
		if imdsClient == nil {
			imdsClient = imds.New(imds.Options{Endpoint: *imdsEndpoint})
		}
		return imdsClient
	}

	switch *provider {
	case "chain":
		// cfg.Credentials as resolved by LoadDefaultConfig
	case "imds":
		cfg.Credentials = aws.NewCredentialsCache(ec2rolecreds.New(func(o *ec2rolecreds.Options) {
			o.Client = newIMDS()
		}))
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
		cfg.Credentials = aws.NewCredentialsCache(endpointcreds.New(uri, func(o *endpointcreds.Options) {
			o.AuthorizationToken = tok
		}))
	case "process":
		if *command == "" {
			fail("process", errors.New("-command is required"))
		}
		cfg.Credentials = aws.NewCredentialsCache(processcreds.NewProvider(*command))
	default:
		fail("flags", fmt.Errorf("unknown provider %q", *provider))
	}

	if cfg.Credentials == nil {
		fail("retrieve", errors.New("no credentials provider resolved"))
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		fail("retrieve", err)
	}
	out.Source = creds.Source
	out.AccessKeyID = creds.AccessKeyID
	out.SecretAccessKey = creds.SecretAccessKey
	out.SessionToken = creds.SessionToken
	out.CanExpire = creds.CanExpire
	if creds.CanExpire {
		out.Expires = creds.Expires.UTC().Format(time.RFC3339)
	}

	if *imdsExtras {
		reg, rerr := newIMDS().GetRegion(ctx, &imds.GetRegionInput{})
		if rerr != nil {
			fail("imds-region", rerr)
		}
		out.Region = reg.Region
		doc, derr := newIMDS().GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
		if derr != nil {
			fail("imds-identity-document", derr)
		}
		raw, _ := json.Marshal(doc.InstanceIdentityDocument)
		_ = json.Unmarshal(raw, &out.IdentityDoc)
	}

	if *s3Endpoint != "" {
		client := s3.NewFromConfig(cfg, func(o *s3.Options) {
			o.EndpointResolver = s3.EndpointResolverFromURL(*s3Endpoint)
			o.UsePathStyle = true
		})
		res := &s3Result{Endpoint: *s3Endpoint, Buckets: []string{}}
		listed, lerr := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		if lerr != nil {
			fail("s3-list-buckets", lerr)
		}
		for _, b := range listed.Buckets {
			res.Buckets = append(res.Buckets, aws.ToString(b.Name))
		}
		if *bucket != "" {
			body := []byte("written by " + sdkVersion + " with " + creds.AccessKeyID + "\n")
			put, perr := client.PutObject(ctx, &s3.PutObjectInput{
				Bucket: bucket, Key: key, Body: bytes.NewReader(body),
			})
			if perr != nil {
				fail("s3-put-object", perr)
			}
			res.PutKey = *key
			res.PutETag = aws.ToString(put.ETag)
			got, gerr := client.GetObject(ctx, &s3.GetObjectInput{Bucket: bucket, Key: key})
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

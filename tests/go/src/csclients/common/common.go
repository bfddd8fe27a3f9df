// Package common is what v1creds and v2creds share: their flags, the JSON line they print, the
// container token (which neither SDK reads from a file) and the S3 round trip. Each program keeps
// its own SDK calls: sessions or configs, providers, IMDS and the S3 client behind S3Client.
//
// GOPATH mode (tests/helpers/go_clients.py) resolves it as "csclients/common".
package common

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
)

// Options are the command-line flags both programs take.
type Options struct {
	Provider     string
	IMDSEndpoint string
	IMDSExtras   bool
	Command      string
	Region       string
	S3Endpoint   string
	Bucket       string
	Key          string
	Timeout      time.Duration
}

// S3Result is what the S3 round trip saw.
type S3Result struct {
	Endpoint string   `json:"endpoint"`
	Buckets  []string `json:"buckets"`
	PutKey   string   `json:"put_key,omitempty"`
	PutETag  string   `json:"put_etag,omitempty"`
}

// Output is the JSON line a successful run prints.
type Output struct {
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
	S3              *S3Result      `json:"s3,omitempty"`
}

// Run is one run of a program: its SDK (named in every line it prints), flags and output.
type Run struct {
	Options
	SDK string
	Out Output
}

// Start parses the flags (keyDefault: the -key default) and returns the run and its context,
// bounded by -timeout.
func Start(sdk, keyDefault string) (*Run, context.Context, context.CancelFunc) {
	var o Options
	flag.StringVar(&o.Provider, "provider", "chain", "chain|imds|container|process")
	flag.StringVar(&o.IMDSEndpoint, "imds-endpoint", "", "IMDS endpoint (default: env or 169.254.169.254)")
	flag.BoolVar(&o.IMDSExtras, "imds-extras", false, "also read placement/region and the identity document")
	flag.StringVar(&o.Command, "command", "", "credential_process command for -provider process")
	flag.StringVar(&o.Region, "region", "", "region for S3 (default: config/env, else us-east-1)")
	flag.StringVar(&o.S3Endpoint, "s3-endpoint", "", "S3 endpoint override (path-style)")
	flag.StringVar(&o.Bucket, "bucket", "", "bucket for PutObject (needs -s3-endpoint)")
	flag.StringVar(&o.Key, "key", keyDefault, "key for PutObject")
	flag.DurationVar(&o.Timeout, "timeout", 30*time.Second, "overall timeout")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	return &Run{Options: o, SDK: sdk, Out: Output{SDK: sdk, Provider: o.Provider}}, ctx, cancel
}

// Fail prints {"error", "stage", "sdk"} and exits 2.
func (r *Run) Fail(stage string, err error) {
	enc := json.NewEncoder(os.Stdout)
	_ = enc.Encode(map[string]string{"error": err.Error(), "stage": stage, "sdk": r.SDK})
	os.Exit(2)
}

// FailOn fails at stage when err is not nil.
func (r *Run) FailOn(stage string, err error) {
	if err != nil {
		r.Fail(stage, err)
	}
}

// UnknownProvider fails for a -provider the program does not know.
func (r *Run) UnknownProvider() {
	r.Fail("flags", fmt.Errorf("unknown provider %q", r.Provider))
}

// ContainerEndpoint is AWS_CONTAINER_CREDENTIALS_FULL_URI and the token to send to it; the
// output says where the token came from (token_from).
func (r *Run) ContainerEndpoint() (uri, token string) {
	uri = os.Getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
	if uri == "" {
		r.Fail("container", errors.New("AWS_CONTAINER_CREDENTIALS_FULL_URI is not set"))
	}
	token, from, err := containerToken()
	r.FailOn("container-token", err)
	r.Out.TokenFrom = from
	return uri, token
}

// containerToken reads AWS_CONTAINER_AUTHORIZATION_TOKEN or, here because the SDKs cannot,
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.
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

// ProcessCommand is -command, which -provider process needs.
func (r *Run) ProcessCommand() string {
	if r.Command == "" {
		r.Fail("process", errors.New("-command is required"))
	}
	return r.Command
}

// Credentials records the set the SDK resolved.
func (r *Run) Credentials(source, accessKeyID, secretAccessKey, sessionToken string) {
	r.Out.Source = source
	r.Out.AccessKeyID = accessKeyID
	r.Out.SecretAccessKey = secretAccessKey
	r.Out.SessionToken = sessionToken
}

// Expires records when the set expires.
func (r *Run) Expires(at time.Time) {
	r.Out.CanExpire = true
	r.Out.Expires = at.UTC().Format(time.RFC3339)
}

// IdentityDocument records the IMDS identity document as the SDK decoded it, as JSON sees it.
func (r *Run) IdentityDocument(doc any) {
	raw, _ := json.Marshal(doc)
	_ = json.Unmarshal(raw, &r.Out.IdentityDoc)
}

// S3Client is the S3 calls the round trip makes, each program's SDK behind it.
type S3Client interface {
	ListBuckets(ctx context.Context) ([]string, error)
	PutObject(ctx context.Context, bucket, key string, body []byte) (etag string, err error)
	GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, error)
}

// S3RoundTrip lists the buckets at -s3-endpoint and, given -bucket, puts an object naming the
// SDK and accessKeyID under -key and reads it back.
func (r *Run) S3RoundTrip(ctx context.Context, client S3Client, accessKeyID string) {
	res := &S3Result{Endpoint: r.S3Endpoint, Buckets: []string{}}
	names, err := client.ListBuckets(ctx)
	r.FailOn("s3-list-buckets", err)
	res.Buckets = append(res.Buckets, names...)
	if r.Bucket != "" {
		body := []byte("written by " + r.SDK + " with " + accessKeyID + "\n")
		etag, err := client.PutObject(ctx, r.Bucket, r.Key, body)
		r.FailOn("s3-put-object", err)
		res.PutKey = r.Key
		res.PutETag = etag
		got, err := client.GetObject(ctx, r.Bucket, r.Key)
		r.FailOn("s3-get-object", err)
		data, _ := io.ReadAll(got)
		_ = got.Close()
		if !bytes.Equal(data, body) {
			r.Fail("s3-get-object", errors.New("object read back differs"))
		}
	}
	r.Out.S3 = res
}

// Print prints the output line.
func (r *Run) Print() {
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(r.Out); err != nil {
		r.Fail("encode", err)
	}
}

# Third-party clients driven by tests/e2e/test_clients_*.py: Debian's Go toolchain and AWS SDKs
# for Go v1 and v2 (sources in /usr/share/gocode, built in GOPATH mode by tests/helpers/
# go_clients.py; no module proxy), s3cmd and restic (minio-go), and iproute2 for `ip netns`
# (those two only reach IMDS at 169.254.169.254, served inside a namespace of the test's own).
need_apt golang-go golang-github-aws-aws-sdk-go-dev golang-github-aws-aws-sdk-go-v2-dev \
  s3cmd restic iproute2
# Build the Go client programs here, not inside a timed test: a cold build takes minutes on two
# loaded cores. Cached by source hash under ~/.cache/credential-sidecar-tests/go (stdlib only).
python3 -m tests.helpers.go_clients build >/dev/null

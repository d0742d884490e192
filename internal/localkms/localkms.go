package localkms

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowdog/flowdog/internal/gobin"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// Module is the local-kms version the tests are run with in CI.
const Module = "github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"

// Defaults of the emulated account.
const (
	// Region is the region local-kms pretends to be in (KMS_REGION).
	Region = "eu-west-2"
	// AccountID is the account local-kms puts in key ARNs (KMS_ACCOUNT_ID).
	AccountID = "111122223333"

	// Fake credentials: local-kms does not check signatures, but the SDK
	// needs some to sign requests.
	accessKeyID     = "AKIDLOCALKMSTEST"
	secretAccessKey = "local-kms-test-secret"

	binaryName   = "local-kms"
	startTimeout = 20 * time.Second
	callTimeout  = 30 * time.Second // RSA_4096 key generation is slow on small machines
)

// PSSSaltLength is the salt length of local-kms's RSASSA_PSS_* signatures
// for a key of modBits bits and a hash of hashLen bytes: it signs with Go's
// rsa.SignPSS and nil options, which means the longest salt that fits
// (rsa.PSSSaltLengthAuto). AWS KMS uses hashLen.
func PSSSaltLength(modBits, hashLen int) int { return (modBits-1+7)/8 - 2 - hashLen }

// Server is a running local-kms.
type Server struct {
	// Endpoint is the base URL, http://127.0.0.1:port.
	Endpoint string
	// Region is the region the server reports in ARNs.
	Region string

	dir      string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the process has exited
	logMu    sync.Mutex
	log      strings.Builder
	stopOnce sync.Once
}

// startedRE matches local-kms's log line once it listens (it binds
// 0.0.0.0:PORT; PORT=0 picks a free port, which this line reports).
var startedRE = regexp.MustCompile(`Local KMS started on [^ ]*:(\d+)`)

// Binary returns the path of the local-kms binary: local-kms on PATH, else
// in $GOBIN or $(go env GOPATH)/bin.
func Binary() (string, error) {
	p, err := gobin.Find(binaryName)
	if err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	return p, nil
}

// inCI reports whether the CI environment variable is set (to anything but
// "", "0" or "false").
func inCI() bool {
	switch strings.ToLower(os.Getenv("CI")) {
	case "", "0", "false":
		return false
	}
	return true
}

// Start runs local-kms on a free loopback port with a temporary data
// directory, waits until it accepts connections, and stops it on t.Cleanup.
// Without the binary it skips the test outside CI and fails it in CI.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		msg := fmt.Sprintf("%v: install it with `go install %s` (.ci/run does)", err, Module)
		if inCI() {
			t.Fatalf("%s; CI is set, so a missing KMS emulator is a failure", msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	s := &Server{Region: Region, dir: dir, exited: make(chan struct{})}
	s.cmd = exec.Command(bin)
	s.cmd.Dir = dir
	s.cmd.Env = append(os.Environ(),
		"PORT=0",
		"KMS_REGION="+Region,
		"KMS_ACCOUNT_ID="+AccountID,
		"KMS_DATA_PATH="+filepath.Join(dir, "data"),
		"KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"),
	)
	pr, pw := io.Pipe()
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("localkms: starting %s: %v", bin, err)
	}
	go func() {
		s.cmd.Wait()
		pw.Close()
		close(s.exited)
	}()
	t.Cleanup(s.Stop)

	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			s.logMu.Lock()
			s.log.WriteString(line + "\n")
			s.logMu.Unlock()
			if m := startedRE.FindStringSubmatch(line); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, pr) // keep the process from blocking on a full pipe
	}()

	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	select {
	case p := <-port:
		s.Endpoint = "http://127.0.0.1:" + p
	case <-s.exited:
		t.Fatalf("localkms: %s exited before it listened:\n%s", bin, s.Log())
	case <-deadline.C:
		t.Fatalf("localkms: %s did not report its port within %v:\n%s", bin, startTimeout, s.Log())
	}
	// It logs the port before Serve; wait until it really answers.
	for {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.Endpoint, "http://"), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-s.exited:
			t.Fatalf("localkms: exited:\n%s", s.Log())
		case <-deadline.C:
			t.Fatalf("localkms: %s does not accept connections: %v", s.Endpoint, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return s
}

// Log returns what local-kms has printed so far.
func (s *Server) Log() string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

// Stop kills the server and waits for it to exit; later calls do nothing.
// Requests after Stop fail with "connection refused".
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd.Process != nil {
			s.cmd.Process.Kill()
		}
		<-s.exited
	})
}

// Client returns a KMS client for the server: its endpoint and region and
// static fake credentials, independent of the environment.
func (s *Server) Client(t testing.TB) *kms.Client {
	t.Helper()
	return kms.New(kms.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(accessKeyID, secretAccessKey, ""),
	})
}

// CreateKey creates an asymmetric SIGN_VERIFY key of the given spec and
// returns its key ID.
func (s *Server) CreateKey(t testing.TB, spec types.KeySpec) (keyID string) {
	t.Helper()
	return s.CreateKeyWithUsage(t, spec, types.KeyUsageTypeSignVerify)
}

// CreateKeyWithUsage creates a key of the given spec and usage (an RSA
// ENCRYPT_DECRYPT key, say) and returns its key ID.
func (s *Server) CreateKeyWithUsage(t testing.TB, spec types.KeySpec, usage types.KeyUsageType) (keyID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	out, err := s.Client(t).CreateKey(ctx, &kms.CreateKeyInput{
		KeySpec:     spec,
		KeyUsage:    usage,
		Description: aws.String("flowdog test key " + string(spec)),
	})
	if err != nil {
		t.Fatalf("localkms: CreateKey %s %s: %v", spec, usage, err)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil {
		t.Fatalf("localkms: CreateKey %s %s: no key ID in the answer", spec, usage)
	}
	return *out.KeyMetadata.KeyId
}

// CreateAlias points alias (alias/...) at keyID.
func (s *Server) CreateAlias(t testing.TB, alias, keyID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := s.Client(t).CreateAlias(ctx, &kms.CreateAliasInput{AliasName: &alias, TargetKeyId: &keyID}); err != nil {
		t.Fatalf("localkms: CreateAlias %s -> %s: %v", alias, keyID, err)
	}
}

// Env returns the environment that points the AWS SDK's default
// configuration at the server, for a child process or t.Setenv:
// AWS_ENDPOINT_URL_KMS, AWS_REGION, static fake credentials, IMDS disabled,
// and shared config and credentials files that do not exist (so the
// machine's ~/.aws does not leak in).
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL_KMS=" + s.Endpoint,
		"AWS_REGION=" + s.Region,
		"AWS_ACCESS_KEY_ID=" + accessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + secretAccessKey,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + filepath.Join(s.dir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(s.dir, "no-aws-credentials"),
	}
}

// Exited reports whether the server process has exited.
func (s *Server) Exited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

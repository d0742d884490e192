package kmssigner

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/flowdog/flowdog/internal/localkms"
)

// awsEnv lists variables of the SDK's configuration that would leak the
// machine's settings into a test.
var awsEnv = []string{
	"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
	"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
	"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
	"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
	"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED",
}

// setEnv clears the SDK's variables for the test, then sets kv ("K=V"),
// leaving out the variables named in drop. Instance metadata is disabled and
// the shared files point nowhere unless kv says otherwise.
func setEnv(t *testing.T, kv []string, drop ...string) {
	for _, k := range awsEnv {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	dir := t.TempDir()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
next:
	for _, e := range kv {
		k, v, _ := strings.Cut(e, "=")
		for _, d := range drop {
			if k == d {
				continue next
			}
		}
		t.Setenv(k, v)
	}
}

func signAndVerify(t *testing.T, s *Signer) {
	t.Helper()
	d := sha256.Sum256([]byte("flowdog"))
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
}

// TestNewFromEnv: the SDK's standard environment alone points the signer at
// the emulator (AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL).
func TestNewFromEnv(t *testing.T) {
	srv := localkms.Start(t)
	keyID := srv.CreateKey(t, types.KeySpecEccNistP256)
	srv.CreateAlias(t, "alias/flowdog-env", keyID)

	t.Run("AWS_ENDPOINT_URL_KMS", func(t *testing.T) {
		setEnv(t, srv.Env())
		s, err := NewFromEnv(context.Background(), "alias/flowdog-env", Options{})
		if err != nil {
			t.Fatalf("NewFromEnv: %v", err)
		}
		if s.Region() != srv.Region || !strings.HasSuffix(s.KeyARN(), keyID) {
			t.Errorf("Region %q, KeyARN %q", s.Region(), s.KeyARN())
		}
		signAndVerify(t, s)
	})
	t.Run("AWS_ENDPOINT_URL", func(t *testing.T) {
		setEnv(t, append(srv.Env(), "AWS_ENDPOINT_URL="+srv.Endpoint), "AWS_ENDPOINT_URL_KMS")
		s, err := NewFromEnv(context.Background(), keyID, Options{})
		if err != nil {
			t.Fatalf("NewFromEnv: %v", err)
		}
		signAndVerify(t, s)
	})
	t.Run("region from the key ARN", func(t *testing.T) {
		arn := "arn:aws:kms:" + srv.Region + ":" + localkms.AccountID + ":key/" + keyID
		setEnv(t, srv.Env(), "AWS_REGION")
		s, err := NewFromEnv(context.Background(), arn, Options{})
		if err != nil {
			t.Fatalf("NewFromEnv: %v", err)
		}
		if s.Region() != srv.Region {
			t.Errorf("Region %q, want %q", s.Region(), srv.Region)
		}
	})
	t.Run("no region", func(t *testing.T) {
		setEnv(t, srv.Env(), "AWS_REGION")
		_, err := NewFromEnv(context.Background(), "alias/flowdog-env", Options{})
		if !errors.Is(err, ErrNoRegion) {
			t.Fatalf("NewFromEnv: %v; want ErrNoRegion", err)
		}
		for _, want := range []string{"alias/flowdog-env", "AWS_REGION", "no AWS region"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		setEnv(t, srv.Env(), "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
		_, err := NewFromEnv(context.Background(), "alias/flowdog-env", Options{})
		if err == nil {
			t.Fatal("NewFromEnv succeeded without credentials")
		}
		for _, want := range []string{"kms: key alias/flowdog-env in region " + srv.Region + ": GetPublicKey: ", "credentials"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		t.Logf("%v", err)
	})
}

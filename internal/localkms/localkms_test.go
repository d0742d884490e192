package localkms

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

func TestStartCreateKeyStop(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") || s.Region != Region {
		t.Fatalf("Endpoint %q, Region %q", s.Endpoint, s.Region)
	}
	c := s.Client(t)
	for _, spec := range []types.KeySpec{types.KeySpecEccNistP256, types.KeySpecEccNistP384, types.KeySpecRsa2048} {
		id := s.CreateKey(t, spec)
		out, err := c.GetPublicKey(context.Background(), &kms.GetPublicKeyInput{KeyId: &id})
		if err != nil {
			t.Fatalf("GetPublicKey %s: %v", spec, err)
		}
		if out.KeySpec != spec || out.KeyUsage != types.KeyUsageTypeSignVerify || len(out.PublicKey) == 0 {
			t.Errorf("%s: KeySpec %q, KeyUsage %q, %d-byte public key", spec, out.KeySpec, out.KeyUsage, len(out.PublicKey))
		}
	}
	env := strings.Join(s.Env(), " ")
	for _, want := range []string{"AWS_ENDPOINT_URL_KMS=" + s.Endpoint, "AWS_REGION=" + Region, "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="} {
		if !strings.Contains(env, want) {
			t.Errorf("Env() lacks %q", want)
		}
	}

	s.Stop()
	s.Stop() // idempotent
	if !s.Exited() {
		t.Fatal("process still running after Stop")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.ListKeys(ctx, &kms.ListKeysInput{}); err == nil {
		t.Fatal("ListKeys succeeded after Stop")
	}
}

func TestPSSSaltLength(t *testing.T) {
	// (modBits-1+7)/8 - 2 - hashLen, as crypto/rsa's PSSSaltLengthAuto.
	if got := PSSSaltLength(2048, 32); got != 222 {
		t.Errorf("PSSSaltLength(2048, 32) = %d, want 222", got)
	}
	if got := PSSSaltLength(4096, 64); got != 446 {
		t.Errorf("PSSSaltLength(4096, 64) = %d, want 446", got)
	}
}

package kmssigner

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// NewFromEnv loads the AWS SDK's default configuration and calls New with a
// KMS client built from it:
//
//   - credentials from the default chain (environment, shared files, SSO,
//     web identity, ECS container, EC2 instance role);
//   - the region from AWS_REGION, AWS_DEFAULT_REGION or the shared config
//     profile; failing those, from keyID when it is an ARN; failing that,
//     from EC2 instance metadata (unless AWS_EC2_METADATA_DISABLED=true);
//   - the endpoint from AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL (or
//     endpoint_url in the shared config), as the SDK defines them, for an
//     emulator or a VPC endpoint with a custom name.
//
// Errors name the key, the region and what failed, e.g. "kms: key alias/x
// in region eu-west-1: GetPublicKey: ...: no EC2 IMDS role found"; without
// a region the error wraps ErrNoRegion and says where a region is looked for.
func NewFromEnv(ctx context.Context, keyID string, opts Options) (*Signer, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("kms: key %s: loading the AWS configuration: %w", keyID, err)
	}
	if cfg.Region == "" {
		cfg.Region = arnRegion(keyID)
	}
	if cfg.Region == "" {
		timeout := opts.Timeout
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		ictx, cancel := context.WithTimeout(ctx, timeout)
		out, ierr := imds.NewFromConfig(cfg).GetRegion(ictx, nil)
		cancel()
		if ierr != nil || out.Region == "" {
			detail := "none reported"
			if ierr != nil {
				detail = ierr.Error()
			}
			return nil, fmt.Errorf("kms: key %s: %w: set AWS_REGION (or region in the shared config profile), give the key as an ARN, or run on EC2 with instance metadata reachable (EC2 instance metadata: %s)",
				keyID, ErrNoRegion, detail)
		}
		cfg.Region = out.Region
	}
	return New(ctx, kms.NewFromConfig(cfg), keyID, opts)
}

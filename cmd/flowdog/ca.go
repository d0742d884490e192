package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/flowdog/flowdog/ca"
	"github.com/flowdog/flowdog/kmssigner"
)

const caUsage = `usage:
  flowdog ca init --kms-key-id ARN|alias/NAME --out root.pem [--subject DN] [--validity DUR]
  flowdog ca init --local --out root.pem --key-out root-key.pem [--subject DN] [--validity DUR]
  flowdog ca show FILE
`

func cmdCA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return 2
	}
	switch args[0] {
	case "init":
		return cmdCAInit(args[1:], stdout, stderr)
	case "show":
		if len(args) != 2 {
			fmt.Fprint(stderr, caUsage)
			return 2
		}
		if err := showCert(args[1], stdout); err != nil {
			fmt.Fprintln(stderr, "flowdog ca show:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "flowdog ca: unknown subcommand %q\n%s", args[0], caUsage)
	return 2
}

func cmdCAInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("flowdog ca init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("kms-key-id", "", "KMS key (ARN, key id or alias/NAME) that holds the root key")
	local := fs.Bool("local", false, "generate the root key in a local file instead (ECDSA P-256)")
	out := fs.String("out", "root.pem", "where to write the root certificate (PEM)")
	keyOut := fs.String("key-out", "", "with --local: where to write the root key (PEM, mode 0600)")
	subject := fs.String("subject", "CN=flowdog root CA,O=flowdog", "subject of the root certificate (CN=...,O=...,OU=...,C=...)")
	validity := fs.Duration("validity", 10*365*24*time.Hour, "lifetime of the root certificate")
	force := fs.Bool("force", false, "overwrite existing files")
	timeout := fs.Duration("timeout", 30*time.Second, "timeout of the KMS calls")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "flowdog ca init: "+format+"\n", a...)
		return code
	}
	if (*keyID == "") == !*local {
		return fail(2, "give exactly one of --kms-key-id and --local")
	}
	if *local && *keyOut == "" {
		return fail(2, "--local needs --key-out")
	}
	if !*local && *keyOut != "" {
		return fail(2, "--key-out goes with --local: a KMS key never leaves KMS")
	}
	name, err := parseSubject(*subject)
	if err != nil {
		return fail(2, "--subject: %v", err)
	}
	if *validity <= 0 {
		return fail(2, "--validity: %v is not positive", *validity)
	}
	for _, p := range []string{*out, *keyOut} {
		if p == "" || *force {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return fail(1, "%s exists; pass --force to overwrite it", p)
		}
	}

	var signer crypto.Signer
	if *local {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fail(1, "generating the key: %v", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fail(1, "%v", err)
		}
		if err := ca.WriteFile(*keyOut, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return fail(1, "%v", err)
		}
		signer = key
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		s, err := kmssigner.NewFromEnv(ctx, *keyID, kmssigner.Options{Timeout: *timeout})
		if err != nil {
			return fail(1, "%v", err)
		}
		signer = s
	}
	cert, err := ca.NewRoot(signer, name, *validity)
	if err != nil {
		return fail(1, "%v", err)
	}
	if err := ca.WriteFile(*out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return fail(1, "%v", err)
	}
	fmt.Fprintf(stdout, "wrote %s\n", *out)
	if *local {
		fmt.Fprintf(stdout, "wrote %s (mode 0600)\n", *keyOut)
	}
	describeCert(cert, stdout)
	return 0
}

// parseSubject reads "CN=x,O=y,OU=z,C=DE,ST=s,L=l".
func parseSubject(s string) (pkix.Name, error) {
	var n pkix.Name
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || v == "" {
			return n, fmt.Errorf("%q is not KEY=value", part)
		}
		switch strings.ToUpper(strings.TrimSpace(k)) {
		case "CN":
			n.CommonName = v
		case "O":
			n.Organization = append(n.Organization, v)
		case "OU":
			n.OrganizationalUnit = append(n.OrganizationalUnit, v)
		case "C":
			n.Country = append(n.Country, v)
		case "ST":
			n.Province = append(n.Province, v)
		case "L":
			n.Locality = append(n.Locality, v)
		default:
			return n, fmt.Errorf("unknown attribute %q (want CN, O, OU, C, ST or L)", k)
		}
	}
	if n.CommonName == "" {
		return n, errors.New("no CN")
	}
	return n, nil
}

func showCert(path string, w io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	found := false
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if found {
			fmt.Fprintln(w)
		}
		found = true
		describeCert(cert, w)
	}
	if !found {
		return fmt.Errorf("%s: no PEM certificate", path)
	}
	return nil
}

func describeCert(c *x509.Certificate, w io.Writer) {
	fp := sha256.Sum256(c.Raw)
	fmt.Fprintf(w, "subject:     %s\n", c.Subject)
	fmt.Fprintf(w, "issuer:      %s\n", c.Issuer)
	fmt.Fprintf(w, "key:         %s\n", keyType(c.PublicKey))
	fmt.Fprintf(w, "signature:   %s\n", c.SignatureAlgorithm)
	fmt.Fprintf(w, "valid:       %s to %s\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	ca := "no"
	if c.IsCA {
		ca = fmt.Sprintf("yes, path length %d", c.MaxPathLen)
		if c.MaxPathLen == -1 {
			ca = "yes, no path length limit"
		}
	}
	fmt.Fprintf(w, "CA:          %s\n", ca)
	fmt.Fprintf(w, "serial:      %x\n", c.SerialNumber)
	fmt.Fprintf(w, "sha256:      %s\n", strings.ToUpper(hex.EncodeToString(fp[:])))
}

func keyType(pub any) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

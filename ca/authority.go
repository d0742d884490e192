package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrNotReady is returned (wrapped) by Ready and Leaf when no valid
// intermediate is loaded: it expired because rotations kept failing, or the
// root itself expired.
var ErrNotReady = errors.New("ca: no valid intermediate CA")

// Option defaults.
const (
	DefaultIntermediateLifetime = 72 * time.Hour
	DefaultRetryInterval        = time.Minute
	DefaultLeafLifetime         = 24 * time.Hour
	DefaultCacheSize            = 10000
)

// Options configure an Authority. Zero values take the defaults.
type Options struct {
	// IntermediateLifetime is how long an intermediate is valid (default
	// 72h); it is never valid beyond the root's NotAfter.
	IntermediateLifetime time.Duration
	// RotateBefore is how long before the intermediate's NotAfter Run
	// replaces it (default: a third of IntermediateLifetime). It must be
	// shorter than IntermediateLifetime. A failed rotation is retried every
	// RetryInterval, so the default leaves a day of retries.
	RotateBefore time.Duration
	// RetryInterval is the delay between rotation attempts after a failure
	// (default 1m). Run also wakes at least this often to check the clock.
	RetryInterval time.Duration
	// LeafLifetime is how long a leaf is valid (default 24h), never beyond
	// the NotAfter of the intermediate that signs it.
	LeafLifetime time.Duration
	// CacheSize bounds the leaf cache (default 10000 leaves).
	CacheSize int
	// Logger receives rotation events (default slog.Default()).
	Logger *slog.Logger
	// Registerer registers the flowdog_ca_* metrics; nil: not registered.
	Registerer prometheus.Registerer
	// Now is the clock, for tests (default time.Now).
	Now func() time.Time
}

func (o *Options) setDefaults() error {
	if o.IntermediateLifetime == 0 {
		o.IntermediateLifetime = DefaultIntermediateLifetime
	}
	if o.RotateBefore == 0 {
		o.RotateBefore = o.IntermediateLifetime / 3
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.LeafLifetime == 0 {
		o.LeafLifetime = DefaultLeafLifetime
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.IntermediateLifetime < 0, o.RotateBefore < 0, o.RetryInterval < 0, o.LeafLifetime < 0, o.CacheSize < 0:
		return errors.New("ca: options: durations and CacheSize must not be negative")
	case o.RotateBefore >= o.IntermediateLifetime:
		return fmt.Errorf("ca: options: RotateBefore %v must be shorter than IntermediateLifetime %v", o.RotateBefore, o.IntermediateLifetime)
	}
	return nil
}

// generation is one intermediate and the leaf key it certifies. Both keys
// live only in memory.
type generation struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey // the intermediate's
	leafKey *ecdsa.PrivateKey // shared by every leaf of this generation
}

// Authority mints leaf certificates under an in-memory intermediate signed
// by a Root, and rotates that intermediate (Run). Its methods are safe for
// concurrent use.
type Authority struct {
	root    *Root
	rootPEM []byte
	opts    Options
	log     *slog.Logger
	m       *metrics

	gen atomic.Pointer[generation]

	rotMu      sync.Mutex // serializes rotations
	failing    bool       // the last rotation attempt failed (rotMu)
	rootCapped bool       // logged that the root's expiry stops rotation (rotMu)

	mu       sync.Mutex // guards cache, inflight, fullLogged
	cache    *lru
	inflight map[string]*call
	// fullLogged: the cache's first eviction (since the last rotation) was logged.
	fullLogged bool

	// mintHook, when set by a test, runs in Leaf before a leaf is signed.
	mintHook func()
}

// New signs the first intermediate with the root and returns the authority.
// An error here is fatal at start-up; it says what failed (an invalid root,
// an expired root, a signer that failed, metrics already registered).
func New(root *Root, opts Options) (*Authority, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := root.check(); err != nil {
		return nil, fmt.Errorf("ca: root: %w", err)
	}
	now := opts.Now()
	if !now.Before(root.Cert.NotAfter) {
		return nil, fmt.Errorf("ca: root %q expired at %s", root.Cert.Subject.CommonName, root.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(root.Cert.NotBefore) {
		return nil, fmt.Errorf("ca: root %q is not valid before %s", root.Cert.Subject.CommonName, root.Cert.NotBefore.UTC().Format(time.RFC3339))
	}
	a := &Authority{
		root:     root,
		rootPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Cert.Raw}),
		opts:     opts,
		log:      opts.Logger,
		m:        newMetrics(),
		cache:    newLRU(opts.CacheSize),
		inflight: make(map[string]*call),
	}
	g, err := a.newGeneration(now)
	if err != nil {
		return nil, fmt.Errorf("ca: signing the first intermediate with root %q: %w", root.Cert.Subject.CommonName, err)
	}
	if err := a.m.register(opts.Registerer); err != nil {
		return nil, err
	}
	a.m.entriesMax.Set(float64(opts.CacheSize))
	a.m.rootNA.Set(float64(root.Cert.NotAfter.Unix()))
	a.install(g)
	a.log.Info("ca: intermediate CA signed", "subject", g.cert.Subject.CommonName,
		"not_after", g.cert.NotAfter, "root", root.Cert.Subject.CommonName)
	return a, nil
}

// newGeneration creates an intermediate key and a leaf key and has the root
// sign the intermediate: one call to the root's signer.
func (a *Authority) newGeneration(now time.Time) (*generation, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating intermediate key: %w", err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating leaf key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(a.opts.IntermediateLifetime)
	if rootNA := a.root.Cert.NotAfter; notAfter.After(rootNA) {
		notAfter = rootNA
	}
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("root expired at %s", notAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "flowdog intermediate CA " + now.UTC().Format("2006-01-02T15:04:05Z"),
			Organization: []string{"flowdog"},
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.root.Cert, key.Public(), a.root.Signer)
	if err != nil {
		return nil, fmt.Errorf("root signer: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing intermediate: %w", err)
	}
	// A signer for another key (a KMS key replaced behind our back) must not
	// produce an intermediate that no client can chain to the root.
	if err := cert.CheckSignatureFrom(a.root.Cert); err != nil {
		return nil, fmt.Errorf("intermediate does not verify against the root certificate: %w", err)
	}
	return &generation{cert: cert, key: key, leafKey: leafKey}, nil
}

// install makes g the current generation and drops the leaves of older ones
// (they remain valid for connections that hold them).
func (a *Authority) install(g *generation) {
	a.gen.Store(g)
	a.m.intermediateNA.Set(float64(g.cert.NotAfter.Unix()))
	a.mu.Lock()
	a.cache.clear()
	a.fullLogged = false
	a.m.entries.Set(0)
	a.mu.Unlock()
}

// Run rotates the intermediate before it expires until ctx is done. A failed
// rotation keeps the current intermediate serving, logs, increments
// flowdog_ca_rotation_failures_total, and is retried every RetryInterval.
// Run wakes at least every RetryInterval, so that clock jumps (a suspended
// instance) are noticed.
func (a *Authority) Run(ctx context.Context) {
	for {
		wait := a.rotateIfDue()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// rotateIfDue rotates the intermediate when it is due and returns how long
// to wait before the next check.
func (a *Authority) rotateIfDue() time.Duration {
	a.rotMu.Lock()
	defer a.rotMu.Unlock()
	now := a.opts.Now()
	cur := a.gen.Load()
	due := cur.cert.NotAfter.Add(-a.opts.RotateBefore)
	if now.Before(due) {
		return min(due.Sub(now), a.opts.RetryInterval)
	}
	if !cur.cert.NotAfter.Before(a.root.Cert.NotAfter) {
		// A new intermediate could not outlive this one.
		if !a.rootCapped {
			a.rootCapped = true
			a.log.Error("ca: root CA expires soon; intermediates cannot be rotated beyond it: replace the root",
				"root", a.root.Cert.Subject.CommonName, "root_not_after", a.root.Cert.NotAfter,
				"intermediate_not_after", cur.cert.NotAfter)
		}
		return a.opts.RetryInterval
	}
	g, err := a.newGeneration(now)
	if err != nil {
		a.failing = true
		a.m.rotationFails.Inc()
		a.log.Error("ca: intermediate rotation failed; the current intermediate keeps serving and rotation is retried",
			"err", err, "retry_in", a.opts.RetryInterval, "current_not_after", cur.cert.NotAfter,
			"remaining", cur.cert.NotAfter.Sub(now).Truncate(time.Second))
		return a.opts.RetryInterval
	}
	a.install(g)
	a.m.rotations.Inc()
	attrs := []any{"subject", g.cert.Subject.CommonName, "not_after", g.cert.NotAfter, "previous_not_after", cur.cert.NotAfter}
	if a.failing {
		a.failing = false
		a.log.Info("ca: intermediate rotation succeeded after failures", attrs...)
	} else {
		a.log.Info("ca: intermediate rotated", attrs...)
	}
	next := g.cert.NotAfter.Add(-a.opts.RotateBefore).Sub(now)
	if next <= 0 {
		next = a.opts.RetryInterval // root-capped: the next check logs it
	}
	return min(next, a.opts.RetryInterval)
}

// Ready returns nil while a valid intermediate is loaded (for the health
// check), an error wrapping ErrNotReady otherwise.
func (a *Authority) Ready() error {
	_, err := a.current(a.opts.Now())
	return err
}

// current returns the current generation if its intermediate is valid at now.
func (a *Authority) current(now time.Time) (*generation, error) {
	g := a.gen.Load()
	if g == nil {
		return nil, ErrNotReady
	}
	if !now.Before(g.cert.NotAfter) {
		return nil, fmt.Errorf("%w: intermediate expired at %s", ErrNotReady, g.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(g.cert.NotBefore) {
		return nil, fmt.Errorf("%w: intermediate not valid before %s", ErrNotReady, g.cert.NotBefore.UTC().Format(time.RFC3339))
	}
	return g, nil
}

// Root returns the root certificate.
func (a *Authority) Root() *x509.Certificate { return a.root.Cert }

// RootPEM returns the root certificate in PEM form (for clients' trust
// stores). The caller must not modify it.
func (a *Authority) RootPEM() []byte { return a.rootPEM }

// Intermediate returns the current intermediate certificate.
func (a *Authority) Intermediate() *x509.Certificate { return a.gen.Load().cert }

// Package config holds flowdog's configuration: its defaults, strict YAML
// decoding (unknown keys are errors), validation that names the field at
// fault, and the commented default file that `flowdog config default` prints.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// defaultYAML is the commented default configuration. It is parsed to produce
// Default, so the printed file and the built-in defaults cannot drift apart.
//
//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the commented default configuration file.
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// Config is the whole configuration file.
type Config struct {
	Log      Log      `yaml:"log"`
	GWLB     GWLB     `yaml:"gwlb"`
	Flows    Flows    `yaml:"flows"`
	Policy   Policy   `yaml:"policy"`
	Health   Health   `yaml:"health"`
	Admin    Admin    `yaml:"admin"`
	Shutdown Shutdown `yaml:"shutdown"`

	StateDir     string              `yaml:"state_dir"`
	CA           CA                  `yaml:"ca"`
	TLS          TLS                 `yaml:"tls"`
	Proxy        Proxy               `yaml:"proxy"`
	Netstack     Netstack            `yaml:"netstack"`
	Interceptors []InterceptorConfig `yaml:"interceptors"`
}

// CA configures the certificate authority of TLS interception.
type CA struct {
	CertFile             string   `yaml:"cert_file"`
	CertPEM              string   `yaml:"cert_pem"`
	KeyFile              string   `yaml:"key_file"`
	KMSKeyID             string   `yaml:"kms_key_id"`
	KMSTimeout           Duration `yaml:"kms_timeout"`
	IntermediateLifetime Duration `yaml:"intermediate_lifetime"`
	LeafLifetime         Duration `yaml:"leaf_lifetime"`
	LeafCache            int      `yaml:"leaf_cache"`
}

// TLS configures what is intercepted and how servers are verified.
type TLS struct {
	PassthroughSNI          []string `yaml:"passthrough_sni"`
	PassthroughDestinations []string `yaml:"passthrough_destinations"`
	AutoPassthrough         bool     `yaml:"auto_passthrough"`
	AutoPassthroughTTL      Duration `yaml:"auto_passthrough_ttl"`
	UpstreamCAFile          string   `yaml:"upstream_ca_file"`
	InsecureSkipVerify      bool     `yaml:"insecure_skip_verify"`
}

// Proxy holds the proxy's timeouts and limits.
type Proxy struct {
	DialTimeout           Duration `yaml:"dial_timeout"`
	TLSHandshakeTimeout   Duration `yaml:"tls_handshake_timeout"`
	HeaderTimeout         Duration `yaml:"header_timeout"`
	ResponseHeaderTimeout Duration `yaml:"response_header_timeout"`
	IdleTimeout           Duration `yaml:"idle_timeout"`
	SniffTimeout          Duration `yaml:"sniff_timeout"`
	MaxWebSocketMessage   int64    `yaml:"max_websocket_message"`
	HTTP2                 bool     `yaml:"http2"`
}

// Netstack configures the per-tenant userspace TCP/IP stacks.
type Netstack struct {
	MTU         int      `yaml:"mtu"`
	TenantIdle  Duration `yaml:"tenant_idle"`
	MaxInFlight int      `yaml:"max_in_flight"`
}

// InterceptorConfig names one compiled-in interceptor and its configuration.
type InterceptorConfig struct {
	Name   string    `yaml:"name"`
	Config yaml.Node `yaml:"config"`
}

// Log configures log/slog output.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// GWLB configures the Geneve socket workers.
type GWLB struct {
	Listen      string `yaml:"listen"`
	Workers     int    `yaml:"workers"`
	BatchSize   int    `yaml:"batch_size"`
	ReadBuffer  int    `yaml:"read_buffer"`
	WriteBuffer int    `yaml:"write_buffer"`
	UDPChecksum bool   `yaml:"udp_checksum"`
}

// Flows configures the flow table.
type Flows struct {
	MaxFlows         int      `yaml:"max_flows"`
	TCPIdleTimeout   Duration `yaml:"tcp_idle_timeout"`
	IdleTimeout      Duration `yaml:"idle_timeout"`
	TCPClosedTimeout Duration `yaml:"tcp_closed_timeout"`
	MaxPending       int      `yaml:"max_pending"`
	PendingPackets   int      `yaml:"pending_packets"`
	PendingTimeout   Duration `yaml:"pending_timeout"`
}

// Policy decides the verdict of new flows.
type Policy struct {
	Default   string `yaml:"default"`
	DropReset bool   `yaml:"drop_reset"`
	Rules     []Rule `yaml:"rules"`
}

// Rule is one policy rule; the first rule that matches a new flow decides.
// Empty lists match everything.
type Rule struct {
	Name         string   `yaml:"name"`
	Action       string   `yaml:"action"`
	Protocols    []string `yaml:"protocols"`
	Sources      []string `yaml:"sources"`
	Destinations []string `yaml:"destinations"`
	Ports        []string `yaml:"ports"`
	Endpoints    []string `yaml:"endpoints"`
	Attachments  []string `yaml:"attachments"`
}

// Health configures the GWLB health check listener.
type Health struct {
	Listen string `yaml:"listen"`
}

// Admin configures the metrics and pprof listener.
type Admin struct {
	Listen string `yaml:"listen"`
}

// Shutdown configures SIGTERM handling.
type Shutdown struct {
	Drain Duration `yaml:"drain"`
}

// Duration is a time.Duration written as "350s" or "5m" in YAML.
type Duration time.Duration

// UnmarshalYAML accepts Go duration strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as \"30s\": %w", n.Line, err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration in Go syntax.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns the built-in defaults.
func Default() *Config {
	c, err := decode(defaultYAML, nil)
	if err != nil {
		panic("config: embedded default.yaml is invalid: " + err.Error())
	}
	return c
}

// Load reads the file at path over the defaults. An empty path gives the defaults.
func Load(path string) (*Config, error) {
	if path == "" {
		return Default(), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML over the defaults and validates the result.
func Parse(b []byte) (*Config, error) {
	c, err := decode(b, Default())
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func decode(b []byte, base *Config) (*Config, error) {
	c := base
	if c == nil {
		c = &Config{}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, errors.New(yamlError(err))
	}
	// A second document would be silently ignored otherwise.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	return c, nil
}

// sections maps the Go types of the configuration to where they sit in the
// file, so that yaml's "field x not found in type config.GWLB" can say
// "gwlb.x".
var sections = map[string]string{
	"config.Config": "", "config.Log": "log.", "config.GWLB": "gwlb.", "config.Flows": "flows.",
	"config.Policy": "policy.", "config.Rule": "policy.rules[].", "config.Health": "health.",
	"config.Admin": "admin.", "config.Shutdown": "shutdown.", "config.CA": "ca.", "config.TLS": "tls.",
	"config.Proxy": "proxy.", "config.Netstack": "netstack.", "config.InterceptorConfig": "interceptors[].",
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type (\S+)`)

// yamlError rewrites yaml.v3's errors to name fields by their path.
func yamlError(err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n ", "")
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:")
	return strings.TrimSpace(unknownField.ReplaceAllStringFunc(msg, func(m string) string {
		sub := unknownField.FindStringSubmatch(m)
		if prefix, ok := sections[sub[2]]; ok {
			return prefix + sub[1] + ": unknown field"
		}
		return m
	}))
}

// FieldError names the field at fault.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, a...)}
}

// Validate checks every field and returns the first problem.
func (c *Config) Validate() error {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fieldErr("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fieldErr("log.format", "%q is not one of text, json", c.Log.Format)
	}
	if _, err := ParseListen(c.GWLB.Listen); err != nil {
		return &FieldError{"gwlb.listen", err}
	}
	if a, _ := ParseListen(c.GWLB.Listen); !a.Addr().Is4() {
		return fieldErr("gwlb.listen", "GWLB sends Geneve over IPv4 only; %q is not an IPv4 address", c.GWLB.Listen)
	}
	if c.GWLB.Workers < 0 || c.GWLB.Workers > 1024 {
		return fieldErr("gwlb.workers", "%d is outside 0 (one per CPU) to 1024", c.GWLB.Workers)
	}
	if c.GWLB.BatchSize < 1 || c.GWLB.BatchSize > 1024 {
		return fieldErr("gwlb.batch_size", "%d is outside 1 to 1024", c.GWLB.BatchSize)
	}
	if c.GWLB.ReadBuffer < 0 {
		return fieldErr("gwlb.read_buffer", "%d is negative", c.GWLB.ReadBuffer)
	}
	if c.GWLB.WriteBuffer < 0 {
		return fieldErr("gwlb.write_buffer", "%d is negative", c.GWLB.WriteBuffer)
	}
	if c.Flows.MaxFlows < 1 {
		return fieldErr("flows.max_flows", "%d must be at least 1", c.Flows.MaxFlows)
	}
	if d := c.Flows.TCPIdleTimeout.D(); d < time.Second || d > 6000*time.Second {
		return fieldErr("flows.tcp_idle_timeout", "%s is outside 1s to 6000s (GWLB allows 60s to 6000s)", d)
	}
	if d := c.Flows.IdleTimeout.D(); d < time.Second || d > 6000*time.Second {
		return fieldErr("flows.idle_timeout", "%s is outside 1s to 6000s", d)
	}
	if d := c.Flows.TCPClosedTimeout.D(); d < 0 || d > c.Flows.TCPIdleTimeout.D() {
		return fieldErr("flows.tcp_closed_timeout", "%s must be between 0 and flows.tcp_idle_timeout", d)
	}
	if c.Flows.MaxPending < 0 {
		return fieldErr("flows.max_pending", "%d is negative", c.Flows.MaxPending)
	}
	if c.Flows.PendingPackets < 1 || c.Flows.PendingPackets > 1024 {
		return fieldErr("flows.pending_packets", "%d is outside 1 to 1024", c.Flows.PendingPackets)
	}
	if d := c.Flows.PendingTimeout.D(); d <= 0 {
		return fieldErr("flows.pending_timeout", "%s must be positive", d)
	}
	if _, err := ParseAction(c.Policy.Default); err != nil {
		return &FieldError{"policy.default", err}
	}
	for i, r := range c.Policy.Rules {
		if err := r.validate(); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				fe.Field = fmt.Sprintf("policy.rules[%d].%s", i, fe.Field)
				return fe
			}
			return err
		}
	}
	if _, err := ParseListen(c.Health.Listen); err != nil {
		return &FieldError{"health.listen", err}
	}
	if c.Admin.Listen != "" {
		if _, err := ParseListen(c.Admin.Listen); err != nil {
			return &FieldError{"admin.listen", err}
		}
	}
	if d := c.Shutdown.Drain.D(); d < 0 {
		return fieldErr("shutdown.drain", "%s is negative", d)
	}
	return c.validateInterception()
}

func (c *Config) validateInterception() error {
	if c.StateDir == "" {
		return fieldErr("state_dir", "is empty; flowdog keeps its local CA there")
	}
	if c.CA.CertFile != "" && c.CA.CertPEM != "" {
		return fieldErr("ca.cert_pem", "give the root certificate once: ca.cert_file or ca.cert_pem")
	}
	haveCert := c.CA.CertFile != "" || c.CA.CertPEM != ""
	switch {
	case c.CA.KMSKeyID != "":
		if c.CA.KeyFile != "" {
			return fieldErr("ca.key_file", "must be empty with ca.kms_key_id: the root key stays in KMS")
		}
		if !haveCert {
			return fieldErr("ca.cert_file", "ca.kms_key_id needs the root certificate (ca.cert_file or ca.cert_pem; make it with `flowdog ca init --kms-key-id ...`)")
		}
		if c.CA.KMSTimeout.D() <= 0 {
			return fieldErr("ca.kms_timeout", "%s must be positive", c.CA.KMSTimeout.D())
		}
	case haveCert != (c.CA.KeyFile != ""):
		return fieldErr("ca.cert_file", "a root certificate and ca.key_file go together (both set, both empty for the generated CA, or ca.kms_key_id instead of ca.key_file)")
	}
	positive := []struct {
		field string
		d     Duration
	}{
		{"ca.intermediate_lifetime", c.CA.IntermediateLifetime}, {"ca.leaf_lifetime", c.CA.LeafLifetime},
		{"tls.auto_passthrough_ttl", c.TLS.AutoPassthroughTTL}, {"proxy.dial_timeout", c.Proxy.DialTimeout},
		{"proxy.tls_handshake_timeout", c.Proxy.TLSHandshakeTimeout}, {"proxy.header_timeout", c.Proxy.HeaderTimeout},
		{"proxy.response_header_timeout", c.Proxy.ResponseHeaderTimeout}, {"proxy.idle_timeout", c.Proxy.IdleTimeout},
		{"proxy.sniff_timeout", c.Proxy.SniffTimeout}, {"netstack.tenant_idle", c.Netstack.TenantIdle},
	}
	for _, p := range positive {
		if p.d.D() <= 0 {
			return fieldErr(p.field, "%s must be positive", p.d.D())
		}
	}
	if c.CA.IntermediateLifetime.D() < time.Hour {
		return fieldErr("ca.intermediate_lifetime", "%s is shorter than an hour", c.CA.IntermediateLifetime.D())
	}
	if c.CA.LeafCache < 1 {
		return fieldErr("ca.leaf_cache", "%d must be at least 1", c.CA.LeafCache)
	}
	for i, s := range c.TLS.PassthroughSNI {
		if _, err := path.Match(strings.ToLower(s), ""); err != nil || s == "" {
			return fieldErr(fmt.Sprintf("tls.passthrough_sni[%d]", i), "%q is not a glob such as *.example.com", s)
		}
	}
	for i, s := range c.TLS.PassthroughDestinations {
		if _, err := ParsePrefix(s); err != nil {
			return &FieldError{fmt.Sprintf("tls.passthrough_destinations[%d]", i), err}
		}
	}
	if c.Proxy.MaxWebSocketMessage < 1024 {
		return fieldErr("proxy.max_websocket_message", "%d is below 1024 bytes", c.Proxy.MaxWebSocketMessage)
	}
	if c.Netstack.MTU < 1280 || c.Netstack.MTU > 8500 {
		return fieldErr("netstack.mtu", "%d is outside 1280 (IPv6's minimum) to 8500 (GWLB's maximum)", c.Netstack.MTU)
	}
	if c.Netstack.MaxInFlight < 1 {
		return fieldErr("netstack.max_in_flight", "%d must be at least 1", c.Netstack.MaxInFlight)
	}
	for i, ic := range c.Interceptors {
		if ic.Name == "" {
			return fieldErr(fmt.Sprintf("interceptors[%d].name", i), "is empty")
		}
	}
	return nil
}

// Intercepts reports whether any policy verdict can be intercept.
func (c *Config) Intercepts() bool {
	if c.Policy.Default == string(ActionIntercept) {
		return true
	}
	for _, r := range c.Policy.Rules {
		if r.Action == string(ActionIntercept) {
			return true
		}
	}
	return false
}

// ParseListen parses "host:port" where an empty host means all IPv4 addresses.
func ParseListen(s string) (netip.AddrPort, error) {
	host, port, ok := strings.Cut(s, ":")
	if strings.HasPrefix(s, "[") {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q: %w", s, err)
		}
		return ap, nil
	}
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q: want host:port, e.g. 0.0.0.0:6081", s)
	}
	a := netip.IPv4Unspecified()
	if host != "" {
		var err error
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: bad port: %w", s, err)
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// Action is a policy verdict name.
type Action string

// Actions.
const (
	ActionFast      Action = "fast"
	ActionDrop      Action = "drop"
	ActionIntercept Action = "intercept"
)

// ParseAction checks an action name.
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case ActionFast, ActionDrop, ActionIntercept:
		return a, nil
	}
	return "", fmt.Errorf("%q is not one of fast, drop, intercept", s)
}

func (r Rule) validate() error {
	if _, err := ParseAction(r.Action); err != nil {
		return &FieldError{"action", err}
	}
	for i, p := range r.Protocols {
		if _, err := ParseProtocol(p); err != nil {
			return &FieldError{fmt.Sprintf("protocols[%d]", i), err}
		}
	}
	for i, s := range r.Sources {
		if _, err := ParsePrefix(s); err != nil {
			return &FieldError{fmt.Sprintf("sources[%d]", i), err}
		}
	}
	for i, s := range r.Destinations {
		if _, err := ParsePrefix(s); err != nil {
			return &FieldError{fmt.Sprintf("destinations[%d]", i), err}
		}
	}
	for i, s := range r.Ports {
		if _, _, err := ParsePortRange(s); err != nil {
			return &FieldError{fmt.Sprintf("ports[%d]", i), err}
		}
	}
	for i, s := range r.Endpoints {
		if _, err := ParseEndpointID(s); err != nil {
			return &FieldError{fmt.Sprintf("endpoints[%d]", i), err}
		}
	}
	for i, s := range r.Attachments {
		if _, err := ParseHexID(s); err != nil {
			return &FieldError{fmt.Sprintf("attachments[%d]", i), err}
		}
	}
	return nil
}

var protocols = map[string]uint8{"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "icmpv6": 58, "sctp": 132}

// ParseProtocol accepts a protocol name (tcp, udp, icmp, icmpv6, ...) or number.
func ParseProtocol(s string) (uint8, error) {
	if p, ok := protocols[strings.ToLower(s)]; ok {
		return p, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%q is neither tcp, udp, icmp, icmpv6, gre, esp, sctp nor a protocol number 0-255", s)
	}
	return uint8(n), nil
}

// ParsePrefix accepts a CIDR or a single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParsePortRange accepts "443" or "8000-8100".
func ParsePortRange(s string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	l, err := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	if err != nil {
		return 0, 0, fmt.Errorf("%q is not a port or port range such as 8000-8100", s)
	}
	h := l
	if isRange {
		if h, err = strconv.ParseUint(strings.TrimSpace(b), 10, 16); err != nil || h < l {
			return 0, 0, fmt.Errorf("%q is not a port range such as 8000-8100", s)
		}
	}
	return uint16(l), uint16(h), nil
}

// ParseEndpointID accepts "vpce-0123456789abcdef0" (as AWS prints it) or bare hex.
func ParseEndpointID(s string) (uint64, error) {
	return ParseHexID(strings.TrimPrefix(s, "vpce-"))
}

// ParseHexID parses a 64-bit id written in hex, with or without 0x.
func ParseHexID(s string) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a 64-bit hex id", s)
	}
	return v, nil
}

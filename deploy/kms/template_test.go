// Package kms_test checks deploy/kms/root-key.yaml, the CloudFormation
// template of flowdog's root CA key in AWS KMS.
package kms_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/flowdog/flowdog/kmssigner"
)

type statement struct {
	Sid       string                    `yaml:"Sid"`
	Effect    string                    `yaml:"Effect"`
	Principal map[string]any            `yaml:"Principal"`
	Action    any                       `yaml:"Action"`
	NotAction any                       `yaml:"NotAction"`
	Condition map[string]map[string]any `yaml:"Condition"`
}

// strs reads a policy's Action: a string or a list of strings.
func strs(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, s := range v {
			out = append(out, s.(string))
		}
		return out
	}
	return nil
}

// noCustomTags fails on YAML tags such as !Ref, which plain YAML parsers
// (and this test) cannot read.
func noCustomTags(t *testing.T, n *yaml.Node) {
	if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
		t.Errorf("line %d: custom tag %s; use the long form (Ref, Fn::Sub, ...)", n.Line, n.Tag)
	}
	for _, c := range n.Content {
		noCustomTags(t, c)
	}
}

func TestRootKeyTemplate(t *testing.T) {
	raw, err := os.ReadFile("root-key.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("root-key.yaml does not parse: %v", err)
	}
	noCustomTags(t, &doc)

	var tmpl struct {
		Parameters map[string]struct {
			AllowedValues []string `yaml:"AllowedValues"`
			Default       string   `yaml:"Default"`
		} `yaml:"Parameters"`
		Resources map[string]struct {
			Type           string `yaml:"Type"`
			DeletionPolicy string `yaml:"DeletionPolicy"`
			Properties     struct {
				KeySpec           map[string]string `yaml:"KeySpec"`
				KeyUsage          string            `yaml:"KeyUsage"`
				EnableKeyRotation *bool             `yaml:"EnableKeyRotation"`
				KeyPolicy         struct {
					Statement []any `yaml:"Statement"`
				} `yaml:"KeyPolicy"`
				AliasName   map[string]string `yaml:"AliasName"`
				TargetKeyId map[string]string `yaml:"TargetKeyId"`
			} `yaml:"Properties"`
		} `yaml:"Resources"`
		Outputs map[string]any `yaml:"Outputs"`
	}
	if err := yaml.Unmarshal(raw, &tmpl); err != nil {
		t.Fatalf("root-key.yaml: %v", err)
	}

	var specs []string
	for _, s := range kmssigner.SupportedKeySpecs {
		specs = append(specs, string(s))
	}
	if got := tmpl.Parameters["KeySpec"].AllowedValues; !slices.Equal(got, specs) {
		t.Errorf("KeySpec AllowedValues %v, want kmssigner's %v", got, specs)
	}
	for _, p := range []string{"ApplianceRoleArn", "AdminPrincipalArn"} {
		if _, ok := tmpl.Parameters[p]; !ok {
			t.Errorf("no parameter %s", p)
		}
	}
	if d := tmpl.Parameters["AliasName"].Default; d != "alias/flowdog-root" {
		t.Errorf("AliasName default %q", d)
	}

	key, ok := tmpl.Resources["RootKey"]
	if !ok || key.Type != "AWS::KMS::Key" {
		t.Fatalf("no AWS::KMS::Key RootKey")
	}
	p := key.Properties
	if p.KeyUsage != "SIGN_VERIFY" || p.KeySpec["Ref"] != "KeySpec" || p.EnableKeyRotation == nil || *p.EnableKeyRotation || key.DeletionPolicy != "Retain" {
		t.Errorf("RootKey: KeyUsage %q, KeySpec %v, EnableKeyRotation %v, DeletionPolicy %q", p.KeyUsage, p.KeySpec, p.EnableKeyRotation, key.DeletionPolicy)
	}
	alias, ok := tmpl.Resources["RootKeyAlias"]
	if !ok || alias.Type != "AWS::KMS::Alias" || alias.Properties.TargetKeyId["Ref"] != "RootKey" {
		t.Errorf("RootKeyAlias: %+v", alias)
	}
	for _, o := range []string{"KeyArn", "AliasName"} {
		if _, ok := tmpl.Outputs[o]; !ok {
			t.Errorf("no output %s", o)
		}
	}

	// What the appliance role may do: kms:Sign and kms:GetPublicKey only.
	var allowed []string
	for _, raw := range p.KeyPolicy.Statement {
		b, _ := yaml.Marshal(raw)
		var st statement
		if err := yaml.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if st.Sid == "" { // the admin's conditional statement (Fn::If)
			continue
		}
		if aws, _ := st.Principal["AWS"].(map[string]any); aws["Ref"] == "ApplianceRoleArn" {
			switch st.Effect {
			case "Allow":
				allowed = append(allowed, strs(st.Action)...)
				if slices.Contains(strs(st.Action), "kms:Sign") && st.Condition["StringEquals"]["kms:MessageType"] != "DIGEST" {
					t.Errorf("%s: kms:Sign is not limited to DIGEST", st.Sid)
				}
			case "Deny":
				if got := strs(st.NotAction); !slices.Equal(got, []string{"kms:Sign", "kms:GetPublicKey"}) {
					t.Errorf("%s: NotAction %v", st.Sid, got)
				}
			}
		}
		if aws, _ := st.Principal["AWS"].(string); aws != "" {
			t.Errorf("%s: literal principal %q (the account root would delegate to IAM)", st.Sid, aws)
		}
	}
	slices.Sort(allowed)
	if !slices.Equal(allowed, []string{"kms:GetPublicKey", "kms:Sign"}) {
		t.Errorf("appliance role may call %v, want only kms:GetPublicKey and kms:Sign", allowed)
	}
}

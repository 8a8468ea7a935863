package config

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Limits on settings, checked wherever a setting is written (slots.hcl, the API, the CLI) and
// wherever one is read from KV (a document edited in the Consul UI), so a setting that cannot
// reach its lane is refused when it is written, not found at swap time after apply and warm.
const (
	// MaxSettingValue bounds one value, in bytes. Linux refuses to start a process with an
	// environment string (KEY=value) over 128 KiB (MAX_ARG_STRLEN): a value near that would
	// fail only when Nomad starts the task. Larger data belongs in a file or a store the app
	// reads.
	MaxSettingValue = 64 << 10
	// MaxSettingsDocument bounds one settings document of a slot (either kind) as KV stores it
	// (EncodeSettings), in bytes. A swap's exchange writes both slots' swappable documents with
	// their bindings and the journal in one Consul transaction, and Consul refuses a
	// transaction request over 512 KiB (txn_max_req_len), in which every value is base64 (4/3
	// of its size): two documents at this bound take 342 KiB, leaving 170 KiB for the rest.
	MaxSettingsDocument = 128 << 10
)

// nomadInterpolation is what Nomad replaces in a task's env values (helper/args.ReplaceEnv of
// Nomad 1.6, applied by client/taskenv to every env value): ${name}, with the value of the
// task's variable or node attribute of that name, or kept as written when there is none. It has
// no escape.
var nomadInterpolation = regexp.MustCompile(`\$\{[a-zA-Z0-9_\-\.]+\}`)

// NomadInterpolates reports whether Nomad could change value in a task's env: it holds a
// ${name} form. Such a setting reaches the task through a template (jobspec.Render), whose
// variables Nomad takes as they are.
func NomadInterpolates(value string) bool { return nomadInterpolation.MatchString(value) }

// maxEnvFileLine is the longest line Nomad reads from a template's env file (go-envparse reads
// with a bufio.Scanner's default buffer): a setting delivered through one takes one line,
// KEY="value" with the value escaped as a JSON string, at most 6 bytes for each of its bytes.
const maxEnvFileLine = 64 << 10

// CheckSettingValue says what is wrong with the value of setting key, or nil. The message
// never holds the value: a sticky one is a secret.
func CheckSettingValue(key, value string) error {
	switch {
	case strings.IndexByte(value, 0) >= 0:
		return fmt.Errorf("the value of setting %q holds a NUL byte, which no environment variable can carry; remove it", key)
	case len(value) > MaxSettingValue:
		return fmt.Errorf("the value of setting %q is %d bytes, over the limit of %d bytes (64 KiB) for one value; keep larger data in a file or a store the app reads",
			key, len(value), MaxSettingValue)
	case !utf8.ValidString(value):
		return fmt.Errorf("the value of setting %q is not valid UTF-8, which a settings document (JSON) cannot keep as it is; write it as text, such as base64", key)
	case NomadInterpolates(value) && len(key)+3+6*len(value) >= maxEnvFileLine:
		return fmt.Errorf("the value of setting %q holds ${…}, which Nomad would replace in a task's env, so it reaches the task through a template's env file, whose lines Nomad reads up to 64 KiB; keep such a value under %d bytes",
			key, (maxEnvFileLine-3-len(key))/6)
	}
	return nil
}

// CheckSettings checks one settings document of kind ("settings" or "sticky"): every value,
// then the size of the document KV would hold. It returns the first problem, by key order.
func CheckSettings(kind string, values map[string]string) error {
	for _, k := range sortedKeys(values) {
		if err := CheckSettingValue(k, values[k]); err != nil {
			return err
		}
	}
	if n := len(EncodeSettings(values)); n > MaxSettingsDocument {
		return fmt.Errorf("the %s document of %d settings is %d bytes, over the limit of %d bytes (128 KiB) for one slot's %s, which keeps a swap's exchange within one Consul transaction; remove or shorten some of them",
			kind, len(values), n, MaxSettingsDocument, kind)
	}
	return nil
}

// EncodeSettings writes a settings document as KV holds it: a JSON object, one key a line in
// key order, for the Consul UI.
func EncodeSettings(values map[string]string) string {
	if values == nil {
		values = map[string]string{}
	}
	b, _ := json.MarshalIndent(values, "", "  ")
	return string(b)
}

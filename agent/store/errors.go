package store

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// The typed errors of slotd's state, which the HTTP API maps to status codes.
var (
	// ErrConflict is a check-and-set that lost: someone changed the keys since they were read.
	ErrConflict = errors.New("consul kv changed concurrently")
	// ErrBusy is an operation refused because another one is journaled for the site.
	ErrBusy = errors.New("an operation already runs on this site")
	// ErrBadRequest is input that cannot be taken as it is: the message says what to fix.
	ErrBadRequest = errors.New("bad request")
	// ErrStopping ends an operation at a phase boundary when the daemon stops or its
	// leadership ends: the operation stays journaled in its state, and the next leader picks it up.
	ErrStopping = errors.New("daemon stopping")
	// ErrDeposed is a write refused because this daemon's session no longer holds the leader
	// lock: the operation stops where it is, for the next leader.
	ErrDeposed = fmt.Errorf("%w: this daemon no longer holds the leader lock", ErrStopping)
)

var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// EnvName reports whether name can be an environment variable or job variable name.
func EnvName(name string) bool { return envKey.MatchString(name) }

// CheckSettingKey checks a setting's key as KV documents and the API take it.
func CheckSettingKey(key string) error {
	if !EnvName(key) {
		return fmt.Errorf("%w: setting key %q is not an environment variable name: use letters, digits and _, not starting with a digit", ErrBadRequest, key)
	}
	if strings.HasPrefix(key, "SLOTD_") {
		return fmt.Errorf("%w: setting key %q: the SLOTD_ prefix is reserved for slotd's own variables", ErrBadRequest, key)
	}
	return nil
}

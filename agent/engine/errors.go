package engine

import "errors"

// The engine's typed errors, which the HTTP API maps to status codes; the store's are in
// agent/store/errors.go.
var (
	// ErrNotFound is a site, slot, setting or operation that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNotLeader refuses a write on a daemon that does not lead.
	ErrNotLeader = errors.New("this daemon is not the leader")
	// ErrStarting refuses an operation on a site that this daemon leads but has not brought up
	// yet (just started, failed over, reloaded): nothing was started, and a retry soon works.
	ErrStarting = errors.New("starting")
	// errUndecided stops an operation whose last write has an outcome Consul did not tell: it
	// stays journaled, and whoever runs it next reads from the journal what happened.
	errUndecided = errors.New("the outcome of a write is not known")
	// errCancelled ends an operation cancelled through the API.
	errCancelled = errors.New("cancelled")
)

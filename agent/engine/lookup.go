package engine

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/slotd/slotd/api"
)

const (
	// rescanGap is the least time between two reads of every site's history for an ID that
	// no index knows: a flood of unknown IDs costs one such read per gap, not one per ID.
	rescanGap = 2 * time.Second
	// maxSighted bounds the IDs remembered from the journals between two rescans.
	maxSighted = 10000
	// lookupTimeout bounds the reads of one look-up.
	lookupTimeout = 30 * time.Second
)

// opIndex says where finished operations are kept, so a look-up by ID reads little: the
// history keys of the operations this daemon ended or found in a scan of every history, and
// the site of the operations it saw running, whose site's history is read when they left the
// journal.
type opIndex struct {
	mu      sync.Mutex
	history map[string]string // operation ID → history key
	sighted map[string]string // operation ID → site, seen in a journal
	scanned time.Time
}

func newOpIndex() *opIndex {
	return &opIndex{history: map[string]string{}, sighted: map[string]string{}}
}

// kept records that operation id is kept at a history key.
func (x *opIndex) kept(id, key string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.history[id] = key
	delete(x.sighted, id)
}

// sight records that operation id runs on site.
func (x *opIndex) sight(id, site string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.sighted) >= maxSighted {
		clear(x.sighted)
	}
	x.sighted[id] = site
}

// where says what the index knows of id: its history key, or the site it was seen running on.
func (x *opIndex) where(id string) (key, site string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.history[id], x.sighted[id]
}

// scanDue reports whether a scan of every history may run now, and if so claims it.
func (x *opIndex) scanDue() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if time.Since(x.scanned) < rescanGap {
		return false
	}
	x.scanned = time.Now()
	return true
}

// merge takes the outcome of a scan.
func (x *opIndex) merge(found map[string]string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for id, key := range found {
		x.history[id] = key
		delete(x.sighted, id)
	}
}

// findOperation looks for an operation that this daemon does not hold in memory, in KV, at a
// bounded cost whatever the ID: the running operations of every site (one read per MaxTxnOps
// sites); then the history entry the index names, reading the history of the site it was
// seen running on, or of every site at most once per rescanGap, when it names none.
func (e *Engine) findOperation(id string) (*api.Operation, error) {
	notFound := fmt.Errorf("%w: no operation %q", ErrNotFound, id)
	if !strings.HasPrefix(id, "op-") {
		return nil, notFound
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	sites := e.SiteNames()
	running, err := e.store.RunningOperations(ctx, sites)
	if err != nil {
		return nil, err
	}
	for site, op := range running {
		e.index.sight(op.ID, site)
		if op.ID == id {
			return op, nil
		}
	}
	key, site := e.index.where(id)
	switch {
	case key != "":
	case site != "":
		found, err := e.store.HistoryIndex(ctx, []string{site})
		if err != nil {
			return nil, err
		}
		e.index.merge(found)
		key = found[id]
	case e.index.scanDue():
		found, err := e.store.HistoryIndex(ctx, sites)
		if err != nil {
			return nil, err
		}
		e.index.merge(found)
		key = found[id]
	}
	if key == "" {
		return e.findGroupOperation(id, notFound)
	}
	op, err := e.store.OperationAt(key)
	if err != nil {
		return nil, err
	}
	if op == nil || op.ID != id {
		return nil, notFound // pruned since
	}
	return op, nil
}

// findGroupOperation looks for a group operation by ID in every declared group's folder, one
// read each; notFound when none has it.
func (e *Engine) findGroupOperation(id string, notFound error) (*api.Operation, error) {
	for _, g := range e.GroupNames() {
		op, err := e.store.FindGroupOperation(g, id)
		if err != nil {
			return nil, err
		}
		if op != nil {
			return op, nil
		}
	}
	return nil, notFound
}

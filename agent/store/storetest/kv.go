// Package storetest holds a Consul KV in memory for the tests of the store and its users.
package storetest

import (
	"errors"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/store"
)

// KV is Consul's KV in memory for tests: check-and-set transactions, all or nothing.
type KV struct {
	mu    sync.Mutex
	index uint64
	pairs map[string]*consulapi.KVPair
	// Fail, if set, refuses a transaction with the error it returns.
	Fail func(consulapi.KVTxnOps) error
	// Lost, if set, picks transactions whose answer is lost: they commit, and the caller
	// gets an error as if the connection broke before the answer came.
	Lost func(consulapi.KVTxnOps) bool
	// Requests counts the requests the KV answered, reads and writes.
	Requests atomic.Int64
}

// ErrLost is the error of a transaction whose answer Lost took.
var ErrLost = errors.New("read tcp 127.0.0.1:50000->127.0.0.1:8500: connection reset by peer")

var _ store.KVAPI = (*KV)(nil)

// New is an empty KV.
func New() *KV { return &KV{index: 10, pairs: map[string]*consulapi.KVPair{}} }

// List is Consul's, over the pairs in memory.
func (f *KV) List(prefix string, _ *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error) {
	f.Requests.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	var out consulapi.KVPairs
	for k, p := range f.pairs {
		if strings.HasPrefix(k, prefix) {
			c := *p
			out = append(out, &c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, &consulapi.QueryMeta{LastIndex: f.index}, nil
}

// Keys is Consul's, over the pairs in memory.
func (f *KV) Keys(prefix, _ string, q *consulapi.QueryOptions) ([]string, *consulapi.QueryMeta, error) {
	pairs, meta, err := f.List(prefix, q)
	keys := make([]string, len(pairs))
	for i, p := range pairs {
		keys[i] = p.Key
	}
	return keys, meta, err
}

// Get is Consul's, over the pairs in memory.
func (f *KV) Get(key string, _ *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error) {
	f.Requests.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pairs[key]
	if !ok {
		return nil, &consulapi.QueryMeta{LastIndex: f.index}, nil
	}
	c := *p
	return &c, &consulapi.QueryMeta{LastIndex: f.index}, nil
}

// Txn is Consul's: check-and-set transactions, all or nothing.
func (f *KV) Txn(ops consulapi.KVTxnOps, _ *consulapi.QueryOptions) (bool, *consulapi.KVTxnResponse, *consulapi.QueryMeta, error) {
	f.Requests.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Fail != nil {
		if err := f.Fail(ops); err != nil {
			return false, nil, nil, err
		}
	}
	resp := &consulapi.KVTxnResponse{}
	for i, op := range ops {
		cur, exists := f.pairs[op.Key]
		var have uint64
		if exists {
			have = cur.ModifyIndex
		}
		if (op.Verb == consulapi.KVCAS || op.Verb == consulapi.KVDeleteCAS) && have != op.Index {
			resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i, What: "index mismatch on " + op.Key})
		}
	}
	if len(resp.Errors) > 0 {
		return false, resp, &consulapi.QueryMeta{}, nil
	}
	f.index++
	for _, op := range ops {
		switch op.Verb {
		case consulapi.KVCAS, consulapi.KVSet:
			created := f.index
			if cur, ok := f.pairs[op.Key]; ok {
				created = cur.CreateIndex
			}
			f.pairs[op.Key] = &consulapi.KVPair{Key: op.Key, Value: op.Value, CreateIndex: created, ModifyIndex: f.index}
			resp.Results = append(resp.Results, &consulapi.KVPair{Key: op.Key, ModifyIndex: f.index})
		case consulapi.KVDeleteCAS, consulapi.KVDelete:
			delete(f.pairs, op.Key)
		case consulapi.KVGetTree:
			for _, k := range slices.Sorted(maps.Keys(f.pairs)) {
				if strings.HasPrefix(k, op.Key) {
					resp.Results = append(resp.Results, f.pairs[k])
				}
			}
		}
	}
	if f.Lost != nil && f.Lost(ops) {
		return false, nil, nil, ErrLost
	}
	return true, resp, &consulapi.QueryMeta{}, nil
}

// Put sets key to value.
func (f *KV) Put(key, value string) {
	_, _, _, _ = f.Txn(consulapi.KVTxnOps{{Verb: consulapi.KVSet, Key: key, Value: []byte(value)}}, nil)
}

// Value is key's value, "" when absent.
func (f *KV) Value(key string) string {
	p, _, _ := f.Get(key, nil)
	if p == nil {
		return ""
	}
	return string(p.Value)
}

// Index is the KV's index now: it moves with every write.
func (f *KV) Index() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index
}

// AllKeys are every key the KV holds, sorted.
func (f *KV) AllKeys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.pairs))
}

package jobspec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"

	nomadapi "github.com/hashicorp/nomad/api"
)

// Change classifies what registering one job version over another does to running allocations.
type Change int

const (
	// NoChange: the jobs are the same; registering would only add a version.
	NoChange Change = iota
	// TagsOnly: only service tags (or canary tags) differ; Nomad updates the allocations in
	// place, without restarting tasks, and re-syncs Consul.
	TagsOnly
	// Restart: anything else; Nomad rolls the change out under the job's update block.
	Restart
)

func (c Change) String() string {
	switch c {
	case NoChange:
		return "none"
	case TagsOnly:
		return "tags-only"
	case Restart:
		return "restart"
	}
	return fmt.Sprintf("Change(%d)", int(c))
}

// serverFields are the top-level job fields the Nomad server manages. They record a
// registration (which version, when, by whom, how it went), not what runs, so two jobs that
// differ only there run the same allocations.
var serverFields = []string{
	"Status", "StatusDescription", "Stable", "Version", "VersionTag", "SubmitTime",
	"CreateIndex", "ModifyIndex", "JobModifyIndex", "NomadTokenID",
}

// Diff classifies going from job a to job b, both produced by Render (possibly from
// different bases):
//   - NoChange when they are deeply equal, ignoring the fields the server manages (Version,
//     Status, Stable, SubmitTime, indexes, …) and the difference between a nil and an empty
//     list or map;
//   - TagsOnly when they differ only in service tags or canary tags, of any service, at group
//     or task level; a reorder of tags is a change too (Consul keeps the order given);
//   - Restart for anything else.
//
// Restart is deliberately the safe default: it is what Nomad does for env, task config,
// meta, resources and the like, and for changes it would apply without a restart (a count,
// the update block, checks) registering still starts a deployment to wait for, which a
// tags-only change never needs. A nil a (no job yet) is Restart.
//
// Compare two renders, never a render with the job read back from Nomad: the server fills in
// defaults on register (node pool, a Consul version constraint, check names, update block
// fields, …), so a job read back differs from its render in ways that look like a Restart.
// Keep the rendered job (or its inputs) of a lane's current version to diff against.
func Diff(a, b *nomadapi.Job) Change {
	if a == nil || b == nil {
		if a == b {
			return NoChange
		}
		return Restart
	}
	na, nb := normalize(a), normalize(b)
	if reflect.DeepEqual(na, nb) {
		return NoChange
	}
	stripTags(na)
	stripTags(nb)
	if reflect.DeepEqual(na, nb) {
		return TagsOnly
	}
	return Restart
}

// normalize returns job as generic JSON without server fields, nulls and empty lists or maps.
func normalize(job *nomadapi.Job) map[string]any {
	b, err := json.Marshal(job)
	if err != nil {
		panic(fmt.Sprintf("jobspec: diff job: %v", err))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // exact numbers: a float64 would hide differences past 2^53
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		panic(fmt.Sprintf("jobspec: diff job: %v", err))
	}
	for _, k := range serverFields {
		delete(m, k)
	}
	prune(m)
	return m
}

// prune deletes, recursively, map entries that are null, empty lists or empty maps.
func prune(v any) (empty bool) {
	switch v := v.(type) {
	case nil:
		return true
	case map[string]any:
		for k, e := range v {
			if prune(e) {
				delete(v, k)
			}
		}
		return len(v) == 0
	case []any:
		for _, e := range v {
			prune(e)
		}
		return len(v) == 0
	}
	return false
}

// stripTags removes the tags and canary tags of every group and task service in m.
func stripTags(m map[string]any) {
	for _, g := range list(m["TaskGroups"]) {
		gm, _ := g.(map[string]any)
		stripServiceTags(gm)
		for _, t := range list(gm["Tasks"]) {
			tm, _ := t.(map[string]any)
			stripServiceTags(tm)
		}
	}
}

func stripServiceTags(m map[string]any) {
	for _, s := range list(m["Services"]) {
		if sm, ok := s.(map[string]any); ok {
			delete(sm, "Tags")
			delete(sm, "CanaryTags")
		}
	}
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

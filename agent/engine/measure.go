package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/slotd/slotd/agent/analysis"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// A swap judged by what users get: the site's analyses (monitor { analysis … }, Prometheus
// queries) evaluated on the candidate before the switch and on the new production during the
// monitor window, each evaluation kept in the operation.

// watcher journals what the watches of a run find while the run waits for them (await): the
// health watch's notes and the analyses' measurements come from goroutines of their own.
type watcher struct {
	mu sync.Mutex
}

// measured keeps a measurement in the operation (the newest api.MaxMeasurements) and journals
// it; safe beside the run's other watches.
func (r *run) measured(m api.Measurement) {
	r.watch.mu.Lock()
	defer r.watch.mu.Unlock()
	r.op.Measurements = append(r.op.Measurements, m)
	if n := len(r.op.Measurements); n > api.MaxMeasurements {
		r.op.Measurements = append([]api.Measurement(nil), r.op.Measurements[n-api.MaxMeasurements:]...)
	}
	_ = r.journal()
}

// noteWatch is note for a watch that runs beside the run's others.
func (r *run) noteWatch(name, msg string) {
	r.watch.mu.Lock()
	defer r.watch.mu.Unlock()
	r.note(name, msg)
}

// side runs every fn until all have returned, and returns the first error; the first error
// ends the others (their ctx).
func allOf(ctx context.Context, fns ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		go func() { errs <- fn(ctx) }()
	}
	var first error
	for range fns {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// analyses are the site's analyses, nil when it has none.
func analyses(cfg *config.Site) []*config.Analysis {
	if cfg.Monitor == nil {
		return nil
	}
	return cfg.Monitor.Analyses
}

// judged is what a swap's analyses judge: the source lane, serving (or about to serve) the
// target, against the target lane it replaces.
func (w *swap) judged(group string) analysis.Vars {
	v := analysis.Vars{Site: w.cfg.Name, Service: w.cfg.Service, Group: group, Slot: w.target.Name,
		Lane: w.srcLane, Job: jobspec.JobID(w.cfg.Name, w.srcLane), OtherLane: w.tgtLane, OtherJob: jobspec.JobID(w.cfg.Name, w.tgtLane)}
	if w.srcVersion != 0 {
		v.Version = strconv.FormatUint(w.srcVersion, 10)
	}
	if w.tgtVersion != 0 {
		v.OtherVersion = strconv.FormatUint(w.tgtVersion, 10)
	}
	return v
}

// watchAnalyses evaluates the site's analyses during the monitor window until ctx ends (nil)
// or one fails (*analysis.Failed); each measurement is kept in rec's operations. paused is
// told whether an analysis whose on_inconclusive is "pause" measures nothing now.
func (w *swap) watchAnalyses(ctx context.Context, group string, paused func(bool), rec ...*run) error {
	as := analyses(w.cfg)
	if len(as) == 0 {
		return nil
	}
	err := w.eng.analysis.Watch(ctx, as, w.judged(group), api.PhaseMonitor, w.recordIn(rec), paused)
	var failed *analysis.Failed
	if errors.As(err, &failed) {
		tellLocked(rec, evAnalysisFailed)
		return fmt.Errorf("%s: %w", w.target.Name, err)
	}
	return err
}

// tellLocked tells an event of each run's operation from a watch beside the run's others.
func tellLocked(rec []*run, what string) {
	for _, r := range rec {
		r.watch.mu.Lock()
		r.eng.tell(r.op, what, nil)
		r.watch.mu.Unlock()
	}
}

// checkAnalyses is the analysis before the switch, on the candidate (reached through its
// preview route's instances as Prometheus sees them): a failure fails the swap before any
// route moves; an analysis that measured nothing and says "pause" leaves the swap waiting.
func (w *swap) checkAnalyses(ctx context.Context, group string, rec ...*run) error {
	as := analyses(w.cfg)
	if len(as) == 0 || w.op.Kind != api.KindSwap {
		return nil
	}
	err := w.eng.analysis.Check(ctx, as, w.judged(group), api.PhaseWarm, w.recordIn(rec))
	var failed *analysis.Failed
	if errors.As(err, &failed) {
		tellLocked(rec, evAnalysisFailed)
		return fmt.Errorf("before the switch: %w", err)
	}
	return err
}

// recordIn keeps each measurement in every run of rec: a group operation's says which site.
func (w *swap) recordIn(rec []*run) func(api.Measurement) {
	return func(m api.Measurement) {
		for _, r := range rec {
			if r.op.Site == "" {
				m.Site = w.cfg.Name
			}
			r.measured(m)
		}
	}
}

// pauseStep is how long a watch of the site's analyses must run to evaluate each once: the
// longest interval, the query's time, and a second.
func pauseStep(cfgs ...*config.Site) time.Duration {
	step := time.Second
	for _, cfg := range cfgs {
		for _, a := range analyses(cfg) {
			step = max(step, a.Interval+analysis.MaxQueryTimeout+time.Second)
		}
	}
	return step
}

// inconclusive reports whether err is only an analysis that measured nothing and says
// "pause" (one that failed as well fails the swap).
func inconclusive(err error) bool {
	var in *analysis.Inconclusive
	var failed *analysis.Failed
	return errors.As(err, &in) && !errors.As(err, &failed)
}

// pausedSet is which analyses' watches measure nothing now (on_inconclusive = "pause"): the
// monitor window does not end while any does.
type pausedSet struct {
	mu  sync.Mutex
	set map[string]bool
}

// tell returns the paused callback of one watch, by key.
func (p *pausedSet) tell(key string) func(bool) {
	return func(on bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.set == nil {
			p.set = map[string]bool{}
		}
		p.set[key] = on
	}
}

func (p *pausedSet) any() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var keys []string
	for k, on := range p.set {
		if on {
			keys = append(keys, k)
		}
	}
	return strings.Join(keys, ", ")
}

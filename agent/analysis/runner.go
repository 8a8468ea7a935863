package analysis

import (
	"context"
	"sync"
	"time"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Observer is told of every measurement, with the site it is of: the daemon's metrics.
type Observer interface {
	Measured(site string, m api.Measurement)
}

// Runner evaluates analyses against Prometheus: during the monitor window (Watch) and before
// the switch (Check).
type Runner struct {
	prom     *Prometheus
	observer Observer
}

// NewRunner asks prom (nil: a Prometheus client of its own) and tells observer (nil: nobody)
// of every measurement.
func NewRunner(prom *Prometheus, observer Observer) *Runner {
	if prom == nil {
		prom = NewPrometheus(nil)
	}
	return &Runner{prom: prom, observer: observer}
}

// Watch evaluates each analysis every Interval, the first time one interval after the call:
// a query measures the time before it, so at once it would judge the lane by the traffic it had
// before it took the slot's. record gets every measurement, in order, from one goroutine.
//
// Watch returns a *Failed as soon as one analysis has Failures failing evaluations in a row
// (an inconclusive one counting as its on_inconclusive says: a pass, a failure, or, with
// "pause", neither), nil when ctx ends, and at once when analyses is empty. paused (nil: not
// told) is called with true when an analysis with on_inconclusive = "pause" measured nothing
// in its newest evaluation, and with false once every such analysis measured again: the
// caller holds what it would do next while Prometheus cannot judge the lane.
func (r *Runner) Watch(ctx context.Context, analyses []*config.Analysis, vars Vars, phase string,
	record func(api.Measurement), paused func(bool)) error {
	plans, err := plan(analyses, vars, func(*config.Analysis) int { return 0 })
	if err != nil {
		return err
	}
	// run ends with a *Failed, or with nil or ctx's error when ctx ends or nothing is watched.
	if _, err := r.run(ctx, plans, vars.Site, phase, record, paused); isFailed(err) {
		return err
	}
	return nil
}

// Check is the analysis before the switch: it evaluates each analysis that has BeforeSwitch,
// every Interval for its BeforeSwitchFor (BeforeSwitchFor / Interval evaluations, at least
// one), and returns a *Failed as Watch does; once every one has finished, a *Failed for an
// analysis with on_inconclusive = "fail" that measured nothing at all, an *Inconclusive for one
// with "pause" that measured nothing at all, and nil otherwise. It returns ctx's error when ctx
// ends first: a check that did not finish passed nothing.
func (r *Runner) Check(ctx context.Context, analyses []*config.Analysis, vars Vars, phase string,
	record func(api.Measurement)) error {
	var before []*config.Analysis
	for _, a := range analyses {
		if a.BeforeSwitch {
			before = append(before, a)
		}
	}
	plans, err := plan(before, vars, func(a *config.Analysis) int {
		return max(1, int(a.BeforeSwitchFor/a.Interval))
	})
	if err != nil {
		return err
	}
	states, err := r.run(ctx, plans, vars.Site, phase, record, nil)
	if err != nil {
		return err
	}
	for _, s := range states {
		if s.conclusive {
			continue
		}
		switch s.a.OnInconclusive {
		case config.InconclusiveFail:
			return &Failed{Analysis: s.a.Name, Measurements: s.inconclusive}
		case config.InconclusivePause:
			return &Inconclusive{Analysis: s.a.Name, Measurements: s.inconclusive}
		}
	}
	return nil
}

func isFailed(err error) bool {
	_, ok := err.(*Failed)
	return ok
}

// planned is one analysis to evaluate: its rendered query, and how many times (0: until the
// run ends).
type planned struct {
	a     *config.Analysis
	query string
	times int
}

func plan(analyses []*config.Analysis, vars Vars, times func(*config.Analysis) int) ([]planned, error) {
	plans := make([]planned, 0, len(analyses))
	for _, a := range analyses {
		q, err := Render(a, vars)
		if err != nil {
			return nil, err
		}
		plans = append(plans, planned{a: a, query: q, times: times(a)})
	}
	return plans, nil
}

// state is what one analysis' evaluations so far add up to.
type state struct {
	a *config.Analysis
	// failing are the evaluations that count as failures since the last that counts as a pass.
	failing []api.Measurement
	// inconclusive are the evaluations that measured nothing.
	inconclusive []api.Measurement
	// conclusive is set once an evaluation measured something.
	conclusive bool
	// holding: the newest evaluation measured nothing and on_inconclusive is "pause".
	holding bool
}

// add counts m and reports whether the analysis has failed.
func (s *state) add(m api.Measurement) bool {
	switch m.Verdict {
	case api.VerdictPass:
		s.failing, s.holding, s.conclusive = nil, false, true
	case api.VerdictFail:
		s.failing, s.holding, s.conclusive = append(s.failing, m), false, true
	default:
		s.inconclusive = append(s.inconclusive, m)
		switch s.a.OnInconclusive {
		case config.InconclusivePass:
			s.failing = nil
		case config.InconclusiveFail:
			s.failing = append(s.failing, m)
		default:
			s.holding = true
		}
	}
	return len(s.failing) >= max(s.a.Failures, 1)
}

// run evaluates the plans, one goroutine each, and counts their measurements in this one. It
// returns when an analysis fails (a *Failed), when every plan is done (nil), or when ctx ends
// (its error); no measurement is recorded after it returned.
func (r *Runner) run(ctx context.Context, plans []planned, site, phase string,
	record func(api.Measurement), paused func(bool)) ([]*state, error) {
	ctx, cancel := context.WithCancel(ctx)
	results := make(chan api.Measurement)
	states := make([]*state, len(plans))
	byName := make(map[string]*state, len(plans))
	var wg sync.WaitGroup
	for i, p := range plans {
		states[i] = &state{a: p.a}
		byName[p.a.Name] = states[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.evaluate(ctx, p, phase, results)
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()

	holding := false
	for {
		select {
		case <-ctx.Done():
			return states, ctx.Err()
		case <-done:
			// Every send was received before its goroutine ended: nothing is left unread.
			return states, nil
		case m := <-results:
			if r.observer != nil {
				r.observer.Measured(site, m)
			}
			if record != nil {
				record(m)
			}
			s := byName[m.Analysis]
			failed := s.add(m)
			if now := anyHolding(states); now != holding {
				holding = now
				if paused != nil {
					paused(holding)
				}
			}
			if failed {
				return states, &Failed{Analysis: s.a.Name, Measurements: s.failing}
			}
		}
	}
}

func anyHolding(states []*state) bool {
	for _, s := range states {
		if s.holding {
			return true
		}
	}
	return false
}

// evaluate measures p every interval, p.times times (0: until ctx ends), and sends each
// measurement to out.
func (r *Runner) evaluate(ctx context.Context, p planned, phase string, out chan<- api.Measurement) {
	tick := time.NewTicker(p.a.Interval)
	defer tick.Stop()
	for n := 0; p.times == 0 || n < p.times; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m := r.measure(ctx, p, phase)
		if ctx.Err() != nil {
			return // the query was cut short: it measured the end of the run, not the lane
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return
		}
	}
}

// measure evaluates p's query once, within MaxQueryTimeout or the interval, the shorter.
func (r *Runner) measure(ctx context.Context, p planned, phase string) api.Measurement {
	at := time.Now()
	qctx, cancel := context.WithTimeout(ctx, min(MaxQueryTimeout, p.a.Interval))
	defer cancel()
	value, reason := r.prom.Query(qctx, p.a.Prometheus, p.query, at)
	verdict, msg := Judge(p.a, value, reason)
	return api.Measurement{Analysis: p.a.Name, Phase: phase, At: at, Value: value, Verdict: verdict, Message: msg}
}

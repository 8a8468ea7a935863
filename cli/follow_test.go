package cli

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// A swap as the agent journals it, version by version.
var (
	swapPending  = swapOp(1, api.StatePending, phase("apply", "pending", -1, -1, ""), phase("warm", "pending", -1, -1, ""))
	swapApplying = swapOp(2, api.StateApplying, phase("apply", "running", 0, -1, ""), phase("warm", "pending", -1, -1, ""))
	swapWaiting  = swapOp(3, api.StateApplying, phase("apply", "running", 0, -1, "2/3 instances healthy"), phase("warm", "pending", -1, -1, ""))
	swapWarming  = swapOp(4, api.StateWarming, phase("apply", "succeeded", 0, 3.2, "3/3 instances healthy"), phase("warm", "running", 3.2, -1, ""))
	swapDone     = swapOp(5, api.StateSucceeded, phase("apply", "succeeded", 0, 3.2, "3/3 instances healthy"), phase("warm", "succeeded", 3.2, 5, "3 instances warm"))
	swapFailed   = withError(swapOp(5, api.StateFailed, phase("apply", "succeeded", 0, 3.2, ""), phase("warm", "failed", 3.2, 9.7, "10.0.0.3:20001 answered 503 to /healthz")),
		"warm: 10.0.0.3:20001 answered 503 to /healthz; staging is back as it was")
	swapCancelled = swapOp(5, api.StateCancelled, phase("apply", "cancelled", 0, 4, "staging is back on version 7"), phase("warm", "skipped", -1, -1, ""))
	swapPreview   = withPreview(swapOp(4, api.StatePreviewing, phase("apply", "succeeded", 0, 3.2, ""), phase("warm", "pending", -1, -1, "")))
)

// A group swap of storefront (web and blog) as the agent journals it: its phases, and each
// member's part.
func groupSwap(index uint64, state string, web, blog string, phases ...api.Phase) api.Operation {
	op := swapOp(index, state, phases...)
	op.ID, op.Site, op.Group = "op-g", "", "storefront"
	op.Members = []api.GroupMember{{Site: "web", State: web}, {Site: "blog", State: blog}}
	if web != api.StatePending {
		op.Members[0].Operation = "op-w"
	}
	if blog != api.StatePending {
		op.Members[1].Operation = "op-b"
	}
	return op
}

var (
	groupPending = groupSwap(1, api.StatePending, api.StatePending, api.StatePending, phase("warm", "pending", -1, -1, ""), phase("switch", "pending", -1, -1, ""))
	groupWarming = groupSwap(2, api.StateWarming, api.StateWarming, api.StateApplying, phase("warm", "running", 0, -1, ""), phase("switch", "pending", -1, -1, ""))
	groupWarmed  = groupSwap(3, api.StateWarming, api.StateWarming, api.StateWarming, phase("warm", "running", 0, -1, ""), phase("switch", "pending", -1, -1, ""))
	groupDone    = groupSwap(4, api.StateSucceeded, api.StateSucceeded, api.StateSucceeded, phase("warm", "succeeded", 0, 2, ""), phase("switch", "succeeded", 2, 2.1, "2 sites switched in one transaction"))
	groupFailed  = withMemberError(withError(groupSwap(4, api.StateFailed, api.StateCancelled, api.StateFailed, phase("warm", "failed", 0, 9, "blog did not warm"), phase("switch", "skipped", -1, -1, "")),
		"warm: blog did not warm; every site is back as it was"), 1, "10.0.0.3:20001 answered 503 to /healthz")
	groupPreview = withPreview(groupSwap(3, api.StatePreviewing, api.StatePreviewing, api.StatePreviewing, phase("warm", "pending", -1, -1, ""), phase("switch", "pending", -1, -1, "")))
)

func withMemberError(op api.Operation, i int, msg string) api.Operation {
	op.Members = append([]api.GroupMember(nil), op.Members...)
	op.Members[i].Error = msg
	return op
}

func withError(op api.Operation, msg string) api.Operation { op.Error = msg; return op }
func withPreview(op api.Operation) api.Operation           { op.Preview = true; return op }

func TestFollowerLines(t *testing.T) {
	cases := []struct {
		name     string
		versions []api.Operation
		cancel   bool
		want     string
		code     int
	}{
		{
			name:     "a swap that succeeds",
			versions: []api.Operation{swapPending, swapApplying, swapWaiting, swapWarming, swapDone},
			want: `swap op-1: web staging -> production
==> apply: started
    apply: 2/3 instances healthy
==> apply: succeeded in 3.2s (3/3 instances healthy)
==> warm: started
==> warm: succeeded in 1.8s (3 instances warm)
swap op-1 succeeded in 12.1s
`,
		},
		{
			name:     "versions missed between reads",
			versions: []api.Operation{swapPending, swapDone},
			want: `swap op-1: web staging -> production
==> apply: started
==> apply: succeeded in 3.2s (3/3 instances healthy)
==> warm: started
==> warm: succeeded in 1.8s (3 instances warm)
swap op-1 succeeded in 12.1s
`,
		},
		{
			name:     "a swap that fails says why",
			versions: []api.Operation{swapApplying, swapWarming, swapFailed},
			code:     1,
			want: `swap op-1: web staging -> production
==> apply: started
==> apply: succeeded in 3.2s (3/3 instances healthy)
==> warm: started
==> warm: failed after 6.5s: 10.0.0.3:20001 answered 503 to /healthz
swap op-1 failed after 12.1s: warm: 10.0.0.3:20001 answered 503 to /healthz; staging is back as it was
`,
		},
		{
			name:     "a cancelled swap fails the command",
			versions: []api.Operation{swapApplying, swapCancelled},
			code:     1,
			want: `swap op-1: web staging -> production
==> apply: started
==> apply: cancelled: staging is back on version 7
==> warm: skipped
swap op-1 cancelled after 12.1s
`,
		},
		{
			name:     "a cancelled swap is what -cancel wants",
			versions: []api.Operation{swapPreview, swapCancelled},
			cancel:   true,
			want: `swap op-1: web staging -> production (preview)
==> apply: started
==> apply: succeeded in 3.2s
==> apply: cancelled: staging is back on version 7
==> warm: skipped
swap op-1 cancelled after 12.1s
`,
		},
		{
			name:     "a group swap prints each site's state as it changes",
			versions: []api.Operation{groupPending, groupWarming, groupWarmed, groupDone},
			want: `swap op-g: group storefront (web, blog) staging -> production
    site web: pending
    site blog: pending
==> warm: started
    site web (op-w): warming
    site blog (op-b): applying
    site blog (op-b): warming
==> warm: succeeded in 2s
==> switch: started
==> switch: succeeded in 100ms (2 sites switched in one transaction)
    site web (op-w): succeeded
    site blog (op-b): succeeded
swap op-g succeeded in 12.1s
`,
		},
		{
			name:     "a failed group swap says which site failed",
			versions: []api.Operation{groupWarming, groupFailed},
			code:     1,
			want: `swap op-g: group storefront (web, blog) staging -> production
==> warm: started
    site web (op-w): warming
    site blog (op-b): applying
==> warm: failed after 9s: blog did not warm
==> switch: skipped
    site web (op-w): cancelled
    site blog (op-b): failed: 10.0.0.3:20001 answered 503 to /healthz
swap op-g failed after 12.1s: warm: blog did not warm; every site is back as it was
`,
		},
		{
			name:     "a group preview says how to finish it",
			versions: []api.Operation{groupWarming, groupPreview},
			want: `swap op-g: group storefront (web, blog) staging -> production
==> warm: started
    site web (op-w): warming
    site blog (op-b): applying
    site web (op-w): previewing
    site blog (op-b): previewing
swap op-g is previewing: staging's candidate is on production's preview routes.
  finish the swap:  slotd swap -complete -group storefront
  cancel it:        slotd swap -cancel -group storefront
`,
		},
		{
			name:     "a preview stops following",
			versions: []api.Operation{swapApplying, swapPreview},
			want: `swap op-1: web staging -> production
==> apply: started
==> apply: succeeded in 3.2s
swap op-1 is previewing: staging's candidate is on production's preview routes.
  finish the swap:  slotd swap -complete web
  cancel it:        slotd swap -cancel web
`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			f := newFollower(&out, func() time.Time { return now }, false)
			for i := range tc.versions {
				f.update(&tc.versions[i])
			}
			code := f.finish(&tc.versions[len(tc.versions)-1], tc.cancel)
			assert.Equal(t, tc.want, out.String())
			assert.Equal(t, tc.code, code)
		})
	}
}

func TestDescribe(t *testing.T) {
	deploy := api.Operation{ID: "op-7", Site: "web", Kind: api.KindDeploy, Slot: "staging",
		Vars: map[string]string{"image": "web:2", "count": "3"}, Trigger: "api"}
	rollback := api.Operation{ID: "op-8", Site: "web", Kind: api.KindRollback, Source: "staging",
		Target: "production", RollbackOf: "op-6", Trigger: "monitor"}
	auto := api.Operation{ID: "op-9", Site: "web", Kind: api.KindSwap, Source: "staging",
		Target: "production", Trigger: "auto_swap"}
	assert.Equal(t, "deploy op-7: web/staging with count=3 image=web:2", describe(&deploy))
	assert.Equal(t, "rollback op-8: web staging -> production (reverses op-6, started by monitor)", describe(&rollback))
	assert.Equal(t, "swap op-9: web staging -> production (started by auto_swap)", describe(&auto))
	group := api.Operation{ID: "op-10", Group: "storefront", Kind: api.KindSwap, Source: "staging", Target: "production",
		Preview: true, Members: []api.GroupMember{{Site: "web"}, {Site: "blog"}}}
	assert.Equal(t, "swap op-10: group storefront (web, blog) staging -> production (preview)", describe(&group))
	group.Members = nil
	assert.Equal(t, "swap op-10: group storefront staging -> production (preview)", describe(&group))
	part := api.Operation{ID: "op-11", Site: "web", Group: "storefront", GroupOperation: "op-10", Kind: api.KindSwap,
		Source: "staging", Target: "production"}
	assert.Equal(t, "swap op-11: web staging -> production (part of op-10 of group storefront)", describe(&part))
}

func TestFollowerSpinner(t *testing.T) {
	var out bytes.Buffer
	clock := t0.Add(3400 * time.Millisecond)
	f := newFollower(&out, func() time.Time { return clock }, true)

	f.update(&swapApplying)
	f.tick()
	clock = clock.Add(time.Second)
	f.tick()
	assert.Equal(t, "swap op-1: web staging -> production\n==> apply: started\n"+
		"\r\x1b[K⠋ apply 3s"+"\r\x1b[K⠙ apply 4s", out.String())

	// A new line first clears the spinner line.
	out.Reset()
	f.update(&swapWarming)
	assert.Equal(t, "\r\x1b[K==> apply: succeeded in 3.2s (3/3 instances healthy)\n==> warm: started\n", out.String())

	// The final line too; a finished operation gets no spinner.
	out.Reset()
	f.tick()
	f.update(&swapDone)
	f.tick()
	code := f.finish(&swapDone, false)
	assert.Equal(t, 0, code)
	assert.Equal(t, "\r\x1b[K⠹ warm 1s"+"\r\x1b[K==> warm: succeeded in 1.8s (3 instances warm)\nswap op-1 succeeded in 12.1s\n", out.String())

	// Without a terminal, tick draws nothing.
	out.Reset()
	plain := newFollower(&out, func() time.Time { return clock }, false)
	plain.update(&swapApplying)
	out.Reset()
	plain.tick()
	assert.Empty(t, out.String())
}

// lockedBuffer is a bytes.Buffer safe for the spinner goroutine and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestSpinnerRedrawsUntilStopped(t *testing.T) {
	var out lockedBuffer
	f := newFollower(&out, func() time.Time { return now }, true)
	f.update(&swapApplying)
	stop := f.spin()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "apply 1m30s") },
		10*time.Second, 10*time.Millisecond, "the spinner never drew")
	stop()
	assert.True(t, strings.HasSuffix(out.String(), "\r\x1b[K"), "stop leaves the spinner line on screen: %q", out.String())
}

func TestFollowingCommands(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		start    api.Operation // the answer that starts the operation
		versions []api.Operation
		code     int
		stdout   string
	}{
		{
			name:     "swap succeeds",
			args:     []string{"swap", "web", "staging"},
			start:    swapPending,
			versions: []api.Operation{swapPending, swapApplying, swapWarming, swapDone},
			stdout: `swap op-1: web staging -> production
==> apply: started
==> apply: succeeded in 3.2s (3/3 instances healthy)
==> warm: started
==> warm: succeeded in 1.8s (3 instances warm)
swap op-1 succeeded in 12.1s
`,
		},
		{
			name:     "swap fails with its reason and exit 1",
			args:     []string{"swap", "web", "staging"},
			start:    swapPending,
			versions: []api.Operation{swapPending, swapWarming, swapFailed},
			code:     1,
			stdout:   "swap op-1 failed after 12.1s: warm: 10.0.0.3:20001 answered 503 to /healthz; staging is back as it was\n",
		},
		{
			name:     "preview ends with exit 0",
			args:     []string{"swap", "web", "staging", "-preview"},
			start:    swapPending,
			versions: []api.Operation{swapPending, swapPreview},
			stdout:   "  finish the swap:  slotd swap -complete web\n",
		},
		{
			name:     "complete follows past previewing",
			args:     []string{"swap", "-complete", "web"},
			start:    swapPreview,
			versions: []api.Operation{swapPreview, swapWarming, swapDone},
			stdout:   "==> warm: succeeded in 1.8s (3 instances warm)\nswap op-1 succeeded in 12.1s\n",
		},
		{
			name:     "cancel ends with exit 0 when cancelled",
			args:     []string{"swap", "-cancel", "web"},
			start:    swapPreview,
			versions: []api.Operation{swapPreview, swapCancelled},
			stdout:   "swap op-1 cancelled after 12.1s\n",
		},
		{
			name:     "cancel in the monitor phase ends the monitor",
			args:     []string{"swap", "-cancel", "web"},
			start:    swapOp(4, api.StateMonitoring),
			versions: []api.Operation{swapOp(4, api.StateMonitoring), swapDone},
			stdout:   "swap op-1 succeeded in 12.1s\n",
		},
		{
			name:     "rollback",
			args:     []string{"rollback", "web"},
			start:    swapPending,
			versions: []api.Operation{swapPending, swapDone},
			stdout:   "swap op-1 succeeded in 12.1s\n",
		},
		{
			name:     "deploy",
			args:     []string{"deploy", "web", "staging"},
			start:    swapPending,
			versions: []api.Operation{swapPending, swapFailed},
			code:     1,
			stdout:   "swap op-1 failed after 12.1s: ",
		},
		{
			name:     "group swap",
			args:     []string{"swap", "-group", "storefront", "staging"},
			start:    groupPending,
			versions: []api.Operation{groupPending, groupDone},
			stdout:   "    site blog (op-b): succeeded\nswap op-g succeeded in 12.1s\n",
		},
		{
			name:     "group preview ends with exit 0",
			args:     []string{"swap", "-group", "storefront", "staging", "-preview"},
			start:    groupPending,
			versions: []api.Operation{groupPending, groupPreview},
			stdout:   "  finish the swap:  slotd swap -complete -group storefront\n",
		},
		{
			name:     "group complete follows past previewing",
			args:     []string{"swap", "-complete", "-group", "storefront"},
			start:    groupPreview,
			versions: []api.Operation{groupPreview, groupDone},
			stdout:   "swap op-g succeeded in 12.1s\n",
		},
		{
			name:     "group cancel ends with exit 0 when cancelled",
			args:     []string{"swap", "-cancel", "-group", "storefront"},
			start:    groupPreview,
			versions: []api.Operation{groupPreview, withError(groupSwap(5, api.StateCancelled, api.StateCancelled, api.StateCancelled), "")},
			stdout:   "swap op-g cancelled after 12.1s\n",
		},
		{
			name:     "group rollback fails with exit 1",
			args:     []string{"rollback", "-group", "storefront"},
			start:    groupPending,
			versions: []api.Operation{groupPending, groupFailed},
			code:     1,
			stdout:   "    site blog (op-b): failed: 10.0.0.3:20001 answered 503 to /healthz\n",
		},
		{
			name:     "swap prints each measurement of its analyses",
			args:     []string{"swap", "web", "staging"},
			start:    analysedMonitoring,
			versions: []api.Operation{analysedMonitoring, analysedMeasured, analysedFailed},
			code:     1,
			stdout: "==> monitor: started\n" +
				"    analysis errors (monitor): 0.0021 ≤ max 0.01  pass\n" +
				"    analysis errors (monitor): 0.052 > max 0.01  FAIL\n" +
				"    analysis latency (monitor): inconclusive: " + unreachable + "\n" +
				"==> monitor: failed after 20.2s: analysis errors failed\n",
		},
		{
			name:     "complete of a waiting swap says why it waits again",
			args:     []string{"swap", "-complete", "web"},
			start:    withWaiting(swapPreview, noMeasure),
			versions: []api.Operation{withWaiting(swapPreview, noMeasure), withWaiting(swapOp(5, api.StatePreviewing, swapPreview.Phases...), gateRefused), swapOp(6, api.StateSucceeded)},
			stdout: "    waiting: " + noMeasure + "; slotd swap -complete web to go on, -cancel to undo\n" +
				"    waiting: " + gateRefused + "; slotd swap -complete web to go on, -cancel to undo\n",
		},
		{
			name:     "follow a finished operation",
			args:     []string{"follow", "op-1"},
			versions: []api.Operation{swapDone},
			stdout:   "swap op-1: web staging -> production\n==> apply: started\n",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.reply("POST /v1/sites/{site}/swap", 202, tc.start)
			f.reply("POST /v1/sites/{site}/rollback", 202, tc.start)
			f.reply("POST /v1/sites/{site}/slots/{slot}/deploy", 202, tc.start)
			f.reply("GET /v1/sites/{site}", 200, api.Site{Name: "web", Operation: &tc.start})
			f.reply("POST /v1/operations/{id}/complete", 200, tc.start)
			f.reply("POST /v1/operations/{id}/cancel", 200, tc.start)
			f.reply("POST /v1/groups/{group}/swap", 202, tc.start)
			f.reply("POST /v1/groups/{group}/rollback", 202, tc.start)
			f.reply("GET /v1/groups/{group}", 200, api.Group{Name: "storefront", Sites: []string{"web", "blog"}, Operation: &tc.start})
			f.operation(tc.versions...)

			r := run(t, f.srv.URL, tc.args...)
			assert.Equal(t, tc.code, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stdout, tc.stdout)
			assert.Empty(t, r.stderr)
		})
	}
}

func TestFollowJSONSendsProgressToStderr(t *testing.T) {
	f := newFakeAPI(t)
	f.reply("POST /v1/sites/{site}/swap", 202, swapPending)
	f.operation(swapPending, swapWarming, swapFailed)
	r := run(t, f.srv.URL, "swap", "web", "staging", "-json")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "==> warm: failed after 6.5s")
	assert.True(t, strings.HasPrefix(r.stdout, "{\n"), r.stdout)
	assert.Contains(t, r.stdout, `"state": "failed"`)
}

func TestInterruptStopsFollowingOnly(t *testing.T) {
	f := newFakeAPI(t)
	blocked := make(chan struct{})
	var once sync.Once
	f.reply("POST /v1/sites/{site}/swap", 202, swapApplying)
	f.mux.HandleFunc("GET /v1/operations/{id}", func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(blocked) })
		<-r.Context().Done() // no change until the CLI gives up
	})

	e, stdout, stderr := testEnv(f.srv.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e.interrupt = func() (context.Context, context.CancelFunc) { return ctx, func() {} }
	go func() {
		<-blocked
		cancel() // Ctrl-C
	}()
	code := e.run([]string{"swap", "web", "staging"})
	assert.Equal(t, 1, code)
	assert.Empty(t, stderr.String())
	assert.Equal(t, "swap op-1: web staging -> production\n==> apply: started\n"+
		"stopped following; the operation goes on. Follow again with: slotd follow op-1\n", stdout.String())
	for _, r := range f.requests() {
		assert.NotEqual(t, "/v1/operations/op-1/cancel", r.Path, "Ctrl-C must not cancel the operation")
	}
}

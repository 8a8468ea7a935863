package cli

import (
	"context"
	"fmt"

	"github.com/slotd/slotd/api"
)

// followHelp is the part of every following command's help about following.
const followHelp = `
The operation is followed live: a line when each phase starts and ends, and a final line
with the outcome. Exit 0 when it succeeds, 1 when it fails or is cancelled. Ctrl-C stops
following, not the operation, and exits 1; 'slotd follow <id>' resumes following. With
-detach the command returns as soon as the operation starts.`

func deployCommand() *command {
	return &command{
		name:     "deploy",
		synopsis: "deploy a new version into a slot and follow it",
		usage:    "<site> <slot> [-var key=value]... [options]",
		help: `
Registers a new version of the slot's lane with the given job variables (on top of the
site's vars) and lets Nomad roll it out. The slot is bound to the new version once every
instance is healthy.
` + followHelp + `

Example:
  slotd deploy web staging -var image=web:2.0`,
		run: runDeploy,
	}
}

func runDeploy(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, true)
	vars := varsFlag{}
	fs.Var(vars, "var", "job variable as `key=value`; repeat for more")
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return e.usageError(cmd, "want a site and a slot, got %d arguments", len(pos))
	}
	return e.startAndFollow(&cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		return c.Deploy(ctx, pos[0], pos[1], vars)
	})
}

func swapCommand() *command {
	return &command{
		name:     "swap",
		synopsis: "swap a slot into another (production by default), or finish a preview",
		usage:    "<site> <source> [target] [-preview] [options]\n       slotd swap -complete|-cancel <site> [options]",
		help: `
Swaps the source slot into the target slot (default "production"): the source's warm
instances take the target's routes and sticky settings, the target's old version lands in
the source slot.

With -preview the swap stops after the target's sticky settings are applied, so you can
check the candidate on the target's preview routes; the command then exits 0. Finish the
swap with -complete or undo it with -cancel. -cancel also stops a deploy, or a swap before its
switch phase, and ends the monitor phase of a swap early.
` + followHelp + `

Examples:
  slotd swap web staging
  slotd swap web staging production -preview
  slotd swap -complete web`,
		run: runSwap,
	}
}

func runSwap(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, true)
	preview := fs.Bool("preview", false, "stop after the target's sticky settings are applied, for a check before -complete")
	complete := fs.Bool("complete", false, "finish the site's previewing swap")
	cancel := fs.Bool("cancel", false, "cancel the site's previewing or running operation (in the monitor phase: end the monitor)")
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}

	if *complete || *cancel {
		switch {
		case *complete && *cancel:
			return e.usageError(cmd, "-complete and -cancel exclude each other")
		case *preview:
			return e.usageError(cmd, "-preview starts a swap; it does not go with -complete or -cancel")
		case len(pos) != 1:
			return e.usageError(cmd, "want a site, got %d arguments", len(pos))
		}
		return e.finishPreview(&cf, pos[0], *cancel)
	}

	if len(pos) < 2 || len(pos) > 3 {
		return e.usageError(cmd, "want a site, a source slot and maybe a target slot, got %d arguments", len(pos))
	}
	req := api.SwapRequest{Source: pos[1], Target: "production", Preview: *preview}
	if len(pos) == 3 {
		req.Target = pos[2]
	}
	return e.startAndFollow(&cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		return c.Swap(ctx, pos[0], req)
	})
}

// finishPreview completes or cancels the site's running operation and follows it to its end.
func (e *env) finishPreview(cf *clientFlags, site string, cancel bool) int {
	c, err := e.client(cf)
	if err != nil {
		return e.fail(err)
	}
	ctx, stop := e.interrupt()
	defer stop()

	s, err := c.Site(ctx, site)
	if err != nil {
		return e.fail(err)
	}
	if s.Operation == nil {
		return e.fail(fmt.Errorf("site %s has no running operation", site))
	}
	var op *api.Operation
	if cancel {
		op, err = c.Cancel(ctx, s.Operation.ID)
	} else {
		op, err = c.Complete(ctx, s.Operation.ID)
	}
	if err != nil {
		return e.fail(err)
	}
	// The answer may still read previewing: follow until the end, past it.
	return e.follow(ctx, cf, c, op, func(o *api.Operation) bool { return api.Terminal(o.State) }, cancel)
}

func rollbackCommand() *command {
	return &command{
		name:     "rollback",
		synopsis: "swap back the last completed swap",
		usage:    "<site> [options]",
		help: `
Swaps back the site's last completed swap: the version that production had before it
returns to production. Inside the site's monitor.rollback_window the lane that served
production is still held warm with production's settings, and the rollback is a switch
only (no restart, no warm-up); after it, the rollback is a full swap.
` + followHelp + `

Example:
  slotd rollback web`,
		run: runRollback,
	}
}

func runRollback(e *env, cmd *command, args []string) int {
	cf, pos, code, ok := e.parseOne(cmd, args, true, "a site")
	if !ok {
		return code
	}
	return e.startAndFollow(cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		return c.Rollback(ctx, pos)
	})
}

func settleCommand() *command {
	return &command{
		name:     "settle",
		synopsis: "end the hold of the last swap now",
		usage:    "<site> [options]",
		help: `
After a swap's switch, the lane that served the target before is held for the site's
monitor.rollback_window: warm, with the target's settings and no public route, so that
'slotd rollback' is a switch only. Meanwhile the source slot has no lane of its own.
Settle ends the hold now: the held lane takes the source slot's settings and routes. The
swap's monitor window goes on. The command follows the swap until the settle phase ended.
` + followHelp + `

Example:
  slotd settle web`,
		run: runSettle,
	}
}

func runSettle(e *env, cmd *command, args []string) int {
	cf, pos, code, ok := e.parseOne(cmd, args, true, "a site")
	if !ok {
		return code
	}
	return e.startAndFollowUntil(cf, settled, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		return c.Settle(ctx, pos)
	})
}

// settled reports whether a swap's settle phase has ended (and the swap went back to its
// monitor), or the swap has.
func settled(op *api.Operation) bool {
	p := op.Phase(api.PhaseSettle)
	return api.Terminal(op.State) || p == nil || (p.State != api.PhasePending && p.State != api.PhaseRunning && op.State != api.StateSettling)
}

// parseOne parses the client flags of a command that takes exactly one argument, what.
func (e *env) parseOne(cmd *command, args []string, follows bool, what string) (*clientFlags, string, int, bool) {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, follows)
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return nil, "", code, false
	}
	if len(pos) != 1 {
		return nil, "", e.usageError(cmd, "want %s, got %d arguments", what, len(pos)), false
	}
	return &cf, pos[0], 0, true
}

func followCommand() *command {
	return &command{
		name:     "follow",
		synopsis: "follow an operation until it ends",
		usage:    "<operation-id> [options]",
		help: `
Follows a running operation, for example after Ctrl-C stopped an earlier command's
following, or one started by auto-swap or by a pipeline. A finished operation prints its
outcome at once. With -detach it prints the operation's current state and returns.
` + followHelp + `

Example:
  slotd follow op-0192`,
		run: runFollow,
	}
}

func runFollow(e *env, cmd *command, args []string) int {
	cf, id, code, ok := e.parseOne(cmd, args, true, "an operation ID")
	if !ok {
		return code
	}
	return e.startAndFollow(cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		return c.Operation(ctx, id, 0)
	})
}

// startAndFollow starts an operation (or reads one) and follows it until it stops.
func (e *env) startAndFollow(cf *clientFlags, start func(context.Context, *api.Client) (*api.Operation, error)) int {
	return e.startAndFollowUntil(cf, api.Stopped, start)
}

// startAndFollowUntil is startAndFollow, following until done says so.
func (e *env) startAndFollowUntil(cf *clientFlags, done func(*api.Operation) bool, start func(context.Context, *api.Client) (*api.Operation, error)) int {
	c, err := e.client(cf)
	if err != nil {
		return e.fail(err)
	}
	ctx, stop := e.interrupt()
	defer stop()
	op, err := start(ctx, c)
	if err != nil {
		return e.fail(err)
	}
	return e.follow(ctx, cf, c, op, done, false)
}

// follow prints op's progress until done, unless -detach, and returns the exit code.
func (e *env) follow(ctx context.Context, cf *clientFlags, c *api.Client, op *api.Operation, done func(*api.Operation) bool, wantCancelled bool) int {
	if cf.detach {
		if cf.json {
			return e.printJSON(op)
		}
		fmt.Fprintf(e.stdout, "%s\n%s %s is %s; follow it with: slotd follow %s\n", describe(op), op.Kind, op.ID, op.State, op.ID)
		return exitOK
	}

	// With -json, stdout carries only the final operation; progress goes to stderr.
	progress := e.stdout
	if cf.json {
		progress = e.stderr
	}
	f := newFollower(progress, e.now, e.isTerminal(progress))
	stopSpinner := f.spin()
	final, err := c.Follow(ctx, op, done, f.update)
	stopSpinner()
	if err != nil {
		if ctx.Err() != nil {
			f.interrupted(op.ID)
			return exitError
		}
		return e.fail(err)
	}
	code := f.finish(final, wantCancelled)
	if cf.json && e.printJSON(final) != exitOK {
		return exitError
	}
	return code
}

package cli

import (
	"context"
	"fmt"

	"github.com/slotd/slotd/api"
)

// followHelp is the part of every following command's help about following.
const followHelp = `
The operation is followed live: a line when each phase starts and ends, one for each
evaluation of the site's analyses ("analysis errors (monitor): 0.052 > max 0.01 FAIL"), one
saying why it waits for -complete or -cancel when a gate refused or an analysis before the
switch measured nothing, and a final line with the outcome. Exit 0 when it succeeds, 1 when
it fails or is cancelled. Ctrl-C stops following, not the operation, and exits 1;
'slotd follow <id>' resumes following. With -detach the command returns as soon as the
operation starts.`

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
		usage: "<site> <source> [target] [-preview] [options]\n" +
			"       slotd swap -group <group> <source> [target] [-preview] [options]\n" +
			"       slotd swap -complete|-cancel <site> | -group <group> [options]",
		help: `
Swaps the source slot into the target slot (default "production"): the source's warm
instances take the target's routes and sticky settings, the target's old version lands in
the source slot.

With -group, swaps the source into the target on every site of the swap group, as one
operation: the sites prepare side by side, switch together in one Consul transaction, and
roll back together. Each site shows its state as it changes.

With -preview the swap stops after the target's sticky settings are applied, so you can
check the candidate on the target's preview routes; the command then exits 0. Finish the
swap with -complete or undo it with -cancel. -cancel also stops a deploy, or a swap before its
switch phase, and ends the monitor phase of a swap early.
` + followHelp + `

Examples:
  slotd swap web staging
  slotd swap web staging production -preview
  slotd swap -complete web
  slotd swap -group storefront staging -preview
  slotd swap -complete -group storefront`,
		run: runSwap,
	}
}

func runSwap(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, true)
	preview := fs.Bool("preview", false, "stop after the target's sticky settings are applied, for a check before -complete")
	complete := fs.Bool("complete", false, "finish the site's (or -group's) previewing swap")
	cancel := fs.Bool("cancel", false, "cancel the site's (or -group's) previewing or running operation (in the monitor phase: end the monitor)")
	var group groupFlag
	group.register(fs, "swap every site of the swap `group` as one operation, instead of one site")
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
		}
		subj, rest, code, ok := e.subjectOf(cmd, &group, pos, 0, "give no site with it")
		if !ok {
			return code
		}
		if len(rest) != 0 {
			return e.usageError(cmd, "want a site, got %d arguments", len(pos))
		}
		return e.finishPreview(&cf, subj, *cancel)
	}

	subj, slots, code, ok := e.subjectOf(cmd, &group, pos, 2, "give only the source slot and maybe a target slot, not a site")
	if !ok {
		return code
	}
	if len(slots) < 1 || len(slots) > 2 {
		if subj.group {
			return e.usageError(cmd, "with -group, want a source slot and maybe a target slot, got %d arguments", len(pos))
		}
		return e.usageError(cmd, "want a site, a source slot and maybe a target slot, got %d arguments", len(pos))
	}
	req := api.SwapRequest{Source: slots[0], Target: "production", Preview: *preview}
	if len(slots) == 2 {
		req.Target = slots[1]
	}
	return e.startAndFollow(&cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		if subj.group {
			return swapGroup(ctx, c, subj.name, req)
		}
		return c.Swap(ctx, subj.name, req)
	})
}

// finishPreview completes or cancels the running operation of a site or group and follows it
// to its end.
func (e *env) finishPreview(cf *clientFlags, subj subject, cancel bool) int {
	c, err := e.client(cf)
	if err != nil {
		return e.fail(err)
	}
	ctx, stop := e.interrupt()
	defer stop()

	running, err := subj.running(ctx, c)
	if err != nil {
		return e.fail(err)
	}
	if running == nil {
		return e.fail(fmt.Errorf("%s has no running operation", subj))
	}
	var op *api.Operation
	if cancel {
		op, err = c.Cancel(ctx, running.ID)
	} else {
		op, err = c.Complete(ctx, running.ID)
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
		usage:    "<site> [options]\n       slotd rollback -group <group> [options]",
		help: `
Swaps back the site's last completed swap: the version that production had before it
returns to production. Inside the site's monitor.rollback_window the lane that served
production is still held warm with production's settings, and the rollback is a switch
only (no restart, no warm-up); after it, the rollback is a full swap. With -group, swaps
back the group's last group swap on every site of the group, as one operation.
` + followHelp + `

Examples:
  slotd rollback web
  slotd rollback -group storefront`,
		run: runRollback,
	}
}

func runRollback(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, true)
	var group groupFlag
	group.register(fs, "roll back the last group swap of every site of the swap `group` as one operation, instead of one site")
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	subj, rest, code, ok := e.subjectOf(cmd, &group, pos, 0, "give no site with it")
	if !ok {
		return code
	}
	if len(rest) != 0 {
		return e.usageError(cmd, "want a site, got %d arguments", len(pos))
	}
	return e.startAndFollow(&cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		if subj.group {
			return c.RollbackGroup(ctx, subj.name)
		}
		return c.Rollback(ctx, subj.name)
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
outcome at once, with every phase and measurement as it happened (the detail of an operation
in the history). With -detach it prints the operation's current state and returns.
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

package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/slotd/slotd/config"
)

func settingsCommand() *command {
	return &command{
		name:     "settings",
		synopsis: "show, set or remove a slot's settings",
		usage:    "<site> <slot> [set KEY=VALUE|KEY=@FILE|KEY=- [-sticky] | unset KEY] [options]",
		help: `
Without a sub-command, prints the slot's swappable settings (they travel with the app on a
swap) and sticky settings (they stay with the slot). Sticky values print as <hidden> unless
-reveal is given. 'set' sets one, swappable unless -sticky; 'unset' removes one. A change
rolls the slot's lane out with its new environment.

A value written on the command line shows in the process list and shell history: give a
secret as KEY=@FILE (the file's content) or KEY=- (read from stdin). Either drops exactly one
trailing newline. A value that itself starts with @ or is - goes through a file.

Examples:
  slotd settings web staging
  slotd settings web production -reveal
  slotd settings web staging set FEATURE_X=on
  slotd settings web production set DATABASE_URL=@db-url.txt -sticky
  vault kv get -field=url secret/db | slotd settings web production set DATABASE_URL=- -sticky
  slotd settings web staging unset FEATURE_X`,
		run: runSettings,
	}
}

func runSettings(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, false)
	sticky := fs.Bool("sticky", false, "with set: the setting stays with the slot on a swap")
	cf.registerReveal(fs.FlagSet)
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}

	var key, value, action string
	switch {
	case len(pos) == 2:
	case len(pos) == 4 && pos[2] == "set":
		var found bool
		key, value, found = strings.Cut(pos[3], "=")
		if !found || key == "" {
			return e.usageError(cmd, "set wants KEY=VALUE, KEY=@FILE or KEY=-, got %q", pos[3])
		}
		action = "set"
	case len(pos) == 4 && pos[2] == "unset":
		key, action = pos[3], "unset"
		if strings.Contains(key, "=") {
			return e.usageError(cmd, "unset wants a KEY, got %q", key)
		}
	case len(pos) > 2 && pos[2] != "set" && pos[2] != "unset":
		return e.usageError(cmd, "unknown sub-command %q: want set or unset", pos[2])
	default:
		return e.usageError(cmd, "want <site> <slot> [set KEY=VALUE | unset KEY], got %d arguments", len(pos))
	}
	if *sticky && action != "set" {
		return e.usageError(cmd, "-sticky goes with set")
	}
	if action == "set" {
		var err error
		if value, err = e.settingValue(key, value); err != nil {
			return e.fail(err)
		}
		// The value itself, read from a file or stdin where one is named, not the @FILE.
		if err := config.CheckSettingValue(key, value); err != nil {
			return e.fail(err)
		}
	}

	c, err := e.client(&cf)
	if err != nil {
		return e.fail(err)
	}
	ctx, stop := e.interrupt()
	defer stop()
	site, slot := pos[0], pos[1]

	switch action {
	case "set":
		if err := c.SetSetting(ctx, site, slot, key, value, *sticky); err != nil {
			return e.fail(err)
		}
		if !cf.json {
			kind := "swappable"
			if *sticky {
				kind = "sticky"
			}
			fmt.Fprintf(e.stdout, "set %s (%s) on %s/%s; the slot rolls out its new environment\n", key, kind, site, slot)
			return exitOK
		}
	case "unset":
		if err := c.DeleteSetting(ctx, site, slot, key); err != nil {
			return e.fail(err)
		}
		if !cf.json {
			fmt.Fprintf(e.stdout, "removed %s from %s/%s; the slot rolls out its new environment\n", key, site, slot)
			return exitOK
		}
	}

	// Showing the settings, or -json after a change: the slot's settings as they are now.
	s, err := c.Settings(ctx, site, slot)
	if err != nil {
		return e.fail(err)
	}
	if cf.json {
		return e.printJSON(s)
	}
	if len(s.Settings) == 0 && len(s.Sticky) == 0 {
		fmt.Fprintf(e.stdout, "no settings on %s/%s\n", site, slot)
		return exitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tKIND")
	for _, k := range sortedKeys(s.Settings) {
		kind := "swappable"
		if _, ok := s.Sticky[k]; ok {
			kind = "swappable (sticky wins)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k, s.Settings[k], kind)
	}
	for _, k := range sortedKeys(s.Sticky) {
		fmt.Fprintf(tw, "%s\t%s\tsticky\n", k, s.Sticky[k])
	}
	_ = tw.Flush()
	if s.Masked {
		fmt.Fprintln(e.stdout, "sticky values are hidden; -reveal shows them")
	}
	return exitOK
}

package jobspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
)

// The env vars Render gives every task: which site, slot and lane it runs as.
const (
	EnvSite = "SLOTD_SITE"
	EnvSlot = "SLOTD_SLOT"
	EnvLane = "SLOTD_LANE"
)

// The job meta keys Render sets. Meta carries only what never changes for a lane: a meta
// change restarts every task, so slot identity (which moves on a swap) lives in env and tags.
const (
	MetaSite = "slotd_site"
	MetaLane = "slotd_lane"
)

// SettingsFile is where, in each task's folder, Render has Nomad write the settings that must
// not reach the task through its env (see Render), as a template with env = true.
const SettingsFile = "local/slotd-settings.env"

// Lane is everything that makes a lane's job differ from the parsed jobspec.
type Lane struct {
	// Site, Lane, Slot and Service name what the job runs as; Lane is "a", "b", …
	// and the job ID becomes Site+"-"+Lane.
	Site, Lane, Slot, Service string
	// SlotTags are the tags of the slot served, normally the slot's name and its declared
	// tags; during a swap the agent passes other sets. Render de-duplicates them, order kept.
	SlotTags []string
	// Env holds the effective settings; Render adds SLOTD_SITE, SLOTD_SLOT and SLOTD_LANE.
	Env map[string]string
}

// JobID is the Nomad job ID of lane of site.
func JobID(site, lane string) string { return site + "-" + lane }

// CheckLane checks that a parsed job can serve as a lane for service: a "service" job in
// which exactly one task group registers service with provider consul, with at least one
// health check on every such registration, and at least one task in that group. Every
// problem found is reported, each naming file.
func CheckLane(job *nomadapi.Job, file, service string) error {
	if job == nil {
		return fmt.Errorf("%s: no job", file)
	}
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{file}, args...)...))
	}

	if typ := deref(job.Type, nomadapi.JobTypeService); typ != nomadapi.JobTypeService {
		fail("job type is %q; a lane must be a %q job", typ, nomadapi.JobTypeService)
	}

	var groups []*nomadapi.TaskGroup
	for _, g := range job.TaskGroups {
		found := false
		for _, s := range groupServices(g) {
			if s.Name != service {
				continue
			}
			if !isConsul(s) {
				fail("group %q registers service %q with provider %s; slotd routes through Consul tags, set provider = %q",
					deref(g.Name, ""), service, s.Provider, nomadapi.ServiceProviderConsul)
				continue
			}
			found = true
			if len(s.Checks) == 0 {
				fail("service %q in group %q has no check; slotd needs a health check to know when an instance is ready",
					service, deref(g.Name, ""))
			}
		}
		if found {
			groups = append(groups, g)
		}
	}
	switch len(groups) {
	case 0:
		fail("no group registers service %q with provider consul", service)
	case 1:
		if len(groups[0].Tasks) == 0 {
			fail("group %q has no task", deref(groups[0].Name, ""))
		}
	default:
		names := make([]string, len(groups))
		for i, g := range groups {
			names[i] = fmt.Sprintf("%q", deref(g.Name, ""))
		}
		fail("groups %s all register service %q; exactly one group may, so that every instance of a lane is one of its allocations",
			strings.Join(names, ", "), service)
	}
	return errors.Join(errs...)
}

// CheckRouteTags checks that the tags job gives site's service, which every lane carries, lead
// to no one slot: none is a slot's name or one of its route tags. config checks the tags a job
// file writes literally when it loads the declarations; this checks them as Nomad parsed them,
// with a deploy's variables.
func CheckRouteTags(job *nomadapi.Job, file string, site *config.Site) error {
	// routes names the slot each name and route tag leads to, and how.
	routes := map[string]string{}
	for _, sl := range site.Slots {
		routes[sl.Name] = fmt.Sprintf("the name of slot %q", sl.Name)
		for _, l := range sl.RouteTagLists() {
			for _, tag := range l.Tags {
				if _, ok := routes[tag]; !ok {
					routes[tag] = fmt.Sprintf("in %s of slot %q", l.Attr, sl.Name)
				}
			}
		}
	}
	var errs []error
	for _, tag := range ServiceTags(job, site.Service) {
		if route, ok := routes[tag]; ok {
			errs = append(errs, fmt.Errorf("%s: service %q has tag %q, %s: every lane carries the job's own tags, so each would serve that route; remove the tag from the job",
				file, site.Service, tag, route))
		}
	}
	return errors.Join(errs...)
}

// Render returns a deep copy of base made into lane l:
//   - ID and Name "<site>-<lane>";
//   - the service named l.Service (in every group or task that registers it) gets its jobspec
//     tags followed by l.SlotTags, without duplicates or empty tags; its checks are left alone;
//   - every task's Env gains l.Env and SLOTD_SITE, SLOTD_SLOT, SLOTD_LANE, which override the
//     same keys from the jobspec; but a setting whose value Nomad would interpolate in Env
//     (config.NomadInterpolates: it holds ${name}, which Nomad replaces with no escape) goes
//     into a template instead, rendered to SettingsFile with env = true: Nomad takes a
//     template's variables as they are, so the task gets the value exactly as set;
//   - job Meta gains slotd_site and slotd_lane.
//
// Render is pure: the same inputs give deeply equal jobs, and base is never modified.
func Render(base *nomadapi.Job, l Lane) *nomadapi.Job {
	job := copyJob(base)
	id := JobID(l.Site, l.Lane)
	job.ID = &id
	job.Name = new(id)

	slotTags := unique(l.SlotTags)
	env := maps.Clone(l.Env)
	if env == nil {
		env = make(map[string]string, 3)
	}
	literal := map[string]string{}
	for k, v := range env {
		if config.NomadInterpolates(v) {
			literal[k] = v
			delete(env, k)
		}
	}
	env[EnvSite] = l.Site
	env[EnvSlot] = l.Slot
	env[EnvLane] = l.Lane

	for _, g := range job.TaskGroups {
		for _, s := range groupServices(g) {
			if s.Name == l.Service {
				s.Tags = unique(append(slices.Clone(s.Tags), slotTags...))
			}
		}
		for _, t := range g.Tasks {
			if t.Env == nil {
				t.Env = make(map[string]string, len(env))
			}
			maps.Copy(t.Env, env)
			if len(literal) > 0 {
				for k := range literal {
					delete(t.Env, k)
				}
				t.Templates = append(t.Templates, settingsTemplate(literal))
			}
		}
	}

	if job.Meta == nil {
		job.Meta = make(map[string]string, 2)
	}
	job.Meta[MetaSite] = l.Site
	job.Meta[MetaLane] = l.Lane
	return job
}

// settingsTemplate delivers vars to a task as a template with env = true. Each is one line of
// the env file, KEY="value" with the value a JSON string, which Nomad's env file parser
// (go-envparse) reads back exactly, and with every '{' escaped so that no part of a value is
// ever a template action for consul-template, which renders the file.
func settingsTemplate(vars map[string]string) *nomadapi.Template {
	var b strings.Builder
	for _, k := range sortedKeys(vars) {
		q, _ := json.Marshal(vars[k])
		fmt.Fprintf(&b, "%s=%s\n", k, strings.ReplaceAll(string(q), "{", `\u007b`))
	}
	t := &nomadapi.Template{DestPath: new(SettingsFile), EmbeddedTmpl: new(b.String()), Envvars: new(true)}
	t.Canonicalize()
	return t
}

// TaskEnv is the environment Render gave task: its Env and the settings of its SettingsFile
// template.
func TaskEnv(task *nomadapi.Task) map[string]string {
	env := maps.Clone(task.Env)
	if env == nil {
		env = map[string]string{}
	}
	for _, t := range task.Templates {
		if t == nil || deref(t.DestPath, "") != SettingsFile || !deref(t.Envvars, false) {
			continue
		}
		for _, line := range strings.Split(deref(t.EmbeddedTmpl, ""), "\n") {
			k, q, ok := strings.Cut(line, "=")
			var v string
			if ok && json.Unmarshal([]byte(q), &v) == nil {
				env[k] = v
			}
		}
	}
	return env
}

// ServiceTags returns the tags of the named service in job: those of the first group that
// registers it (group services before task services). Nil when no group does.
func ServiceTags(job *nomadapi.Job, service string) []string {
	if job == nil {
		return nil
	}
	for _, g := range job.TaskGroups {
		for _, s := range groupServices(g) {
			if s.Name == service {
				return slices.Clone(s.Tags)
			}
		}
	}
	return nil
}

// groupServices lists the services registered by g: its own, then those of its tasks.
func groupServices(g *nomadapi.TaskGroup) []*nomadapi.Service {
	if g == nil {
		return nil
	}
	out := slices.Clone(g.Services)
	for _, t := range g.Tasks {
		if t != nil {
			out = append(out, t.Services...)
		}
	}
	return slices.DeleteFunc(out, func(s *nomadapi.Service) bool { return s == nil })
}

// isConsul tells whether s registers in Consul; an empty provider means Consul in Nomad.
func isConsul(s *nomadapi.Service) bool {
	return s.Provider == "" || s.Provider == nomadapi.ServiceProviderConsul
}

// unique returns tags without empty strings and repeats, first occurrence kept; nil if none.
func unique(tags []string) []string {
	var out []string
	seen := make(map[string]bool, len(tags))
	for _, t := range tags {
		if t == "" || seen[t] {
			continue
		}
		seen[t] = true
		out = append(out, t)
	}
	return out
}

// copyJob deep-copies a job through JSON, the form in which the Nomad API gives and takes it.
func copyJob(job *nomadapi.Job) *nomadapi.Job {
	out := new(nomadapi.Job)
	if job == nil {
		return out
	}
	b, err := json.Marshal(job)
	if err != nil {
		// Only a value the Nomad API could not carry either (a NaN in a task config) gets here.
		panic(fmt.Sprintf("jobspec: copy job: %v", err))
	}
	if err := json.Unmarshal(b, out); err != nil {
		panic(fmt.Sprintf("jobspec: copy job: %v", err))
	}
	return out
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

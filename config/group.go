package config

import (
	"slices"

	"github.com/hashicorp/hcl/v2"
)

// validateGroups checks every group against the sites of every file: a group's members are
// declared sites, each listed once, from 2 to MaxGroupSites of them. A site may belong to
// several groups.
func (b *builder) validateGroups() {
	var declared []string
	sites := map[string]bool{}
	for _, s := range b.cfg.Sites {
		if !sites[s.Name] {
			sites[s.Name] = true
			declared = append(declared, s.Name)
		}
	}
	slices.Sort(declared)
	seen := map[string]*Group{}
	for _, g := range b.cfg.Groups {
		b.validateGroup(g, sites, declared)
		if first, ok := seen[g.Name]; ok {
			b.errorf(b.src.labelRange(g.Range), "Duplicate group",
				"Group %q is already declared at %s; rename or remove one of them.", g.Name, position(first.Range))
			continue
		}
		seen[g.Name] = g
	}
}

func (b *builder) validateGroup(g *Group, sites map[string]bool, declared []string) {
	if !dnsLabel.MatchString(g.Name) {
		b.errorf(b.src.labelRange(g.Range), "Invalid group name",
			"Group name %q is not a DNS label: %s. It is part of the API's paths and of Consul KV keys.",
			g.Name, labelRule)
	}
	// sites is required: HCL reports it left out, these report what it lists.
	if b.src.attr(g.Range, "sites") == nil {
		return
	}
	listed := map[string]hcl.Range{}
	for i, name := range g.Sites {
		at := b.src.itemRange(g.Range, "sites", i)
		if first, ok := listed[name]; ok {
			b.errorf(at, "Duplicate group site",
				"Group %q lists site %q twice (first at %s); keep one.", g.Name, name, position(first))
			continue
		}
		listed[name] = at
		if !sites[name] {
			b.errorf(at, "Unknown group site", "Group %q lists site %q, which is not declared; %s.",
				g.Name, name, nameDeclared(declared))
		}
	}
	at := b.src.attrRange(g.Range, "sites")
	switch n := len(listed); {
	case n < 2:
		b.errorf(at, "Too few group sites",
			"Group %q lists %d site(s); list at least two: a group swaps several sites as one (a single site swaps on its own).",
			g.Name, n)
	case n > MaxGroupSites:
		b.errorf(at, "Too many group sites",
			"Group %q lists %d sites; list at most %d: the switch exchanges every member's bindings in one Consul transaction, which holds %d of them. Split the group.",
			g.Name, n, MaxGroupSites, MaxGroupSites)
	}
}

// nameDeclared says which sites a group may list.
func nameDeclared(declared []string) string {
	if len(declared) == 0 {
		return "declare the site first (no site is declared)"
	}
	return "name one of: " + listNames(declared, "")
}

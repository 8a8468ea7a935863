package jobspec

import (
	"errors"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingParser answers every parse with a new job, or fails when told to.
type countingParser struct {
	calls int
	fail  bool
}

func (p *countingParser) ParseHCLOpts(req *nomadapi.JobsParseRequest) (*nomadapi.Job, error) {
	p.calls++
	if p.fail {
		return nil, errors.New("server away")
	}
	id := "web"
	return &nomadapi.Job{ID: &id}, nil
}

func TestCachingParser(t *testing.T) {
	inner := &countingParser{}
	c := &CachingParser{P: inner, Max: 2}
	req := func(hcl, vars string) *nomadapi.JobsParseRequest {
		return &nomadapi.JobsParseRequest{JobHCL: hcl, Variables: vars, Canonicalize: true}
	}

	first, err := c.ParseHCLOpts(req("job {}", "v = 1"))
	require.NoError(t, err)
	again, err := c.ParseHCLOpts(req("job {}", "v = 1"))
	require.NoError(t, err)
	assert.Same(t, first, again, "the same jobspec and variables are parsed once")
	assert.Equal(t, 1, inner.calls)

	_, err = c.ParseHCLOpts(req("job {}", "v = 2"))
	require.NoError(t, err)
	assert.Equal(t, 2, inner.calls, "other variables are another parse")

	inner.fail = true
	_, err = c.ParseHCLOpts(req("job { x }", ""))
	require.Error(t, err)
	_, err = c.ParseHCLOpts(req("job { x }", ""))
	require.Error(t, err)
	assert.Equal(t, 4, inner.calls, "a failed parse is not kept")

	inner.fail = false
	_, err = c.ParseHCLOpts(req("job { y }", ""))
	require.NoError(t, err)
	_, err = c.ParseHCLOpts(req("job {}", "v = 1"))
	require.NoError(t, err)
	assert.Equal(t, 6, inner.calls, "a full cache starts over")
}

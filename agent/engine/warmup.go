package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/config"
)

// warmInstances requests every warm-up path of every instance, in parallel across instances.
// An instance is warm when each path answered with an accepted status within its attempts.
func warmInstances(ctx context.Context, client *http.Client, wu *config.Warmup, entries []*consulapi.ServiceEntry) error {
	var wg sync.WaitGroup
	errs := make([]error, len(entries))
	for i, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = warmInstance(ctx, client, wu, e)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func warmInstance(ctx context.Context, client *http.Client, wu *config.Warmup, e *consulapi.ServiceEntry) error {
	addr := e.Service.Address
	if addr == "" {
		addr = e.Node.Address
	}
	base := "http://" + net.JoinHostPort(addr, strconv.Itoa(e.Service.Port))
	for _, path := range wu.Paths {
		var last string
		ok := false
		for attempt := 1; attempt <= wu.Attempts && !ok; attempt++ {
			if attempt > 1 {
				if err := query.Sleep(ctx, wu.Interval); err != nil {
					return err
				}
			}
			status, err := warmRequest(ctx, client, base+path, wu)
			switch {
			case err != nil:
				last = err.Error()
			case acceptedStatus(wu.Statuses, status):
				ok = true
			default:
				last = fmt.Sprintf("status %d", status)
			}
		}
		if !ok {
			return fmt.Errorf("instance %s (%s) did not warm up on %s after %d attempts: %s", e.Service.ID, base, path, wu.Attempts, last)
		}
	}
	return nil
}

func warmRequest(ctx context.Context, client *http.Client, url string, wu *config.Warmup) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, wu.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if wu.Host != "" {
		req.Host = wu.Host
	}
	req.Header.Set("User-Agent", "slotd-warmup")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, nil
}

func acceptedStatus(statuses []int, code int) bool {
	if len(statuses) == 0 {
		return code >= 200 && code < 400
	}
	for _, s := range statuses {
		if s == code {
			return true
		}
	}
	return false
}

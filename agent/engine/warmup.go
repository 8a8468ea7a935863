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

// newWarmupClient is the client of the warm-up requests: no keep-alive, no proxy.
func newWarmupClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
}

// warmInstances requests every warm-up path of every instance, in parallel across instances.
// An instance is warm when each path answered with an accepted status within its attempts.
// A redirect is a status like any other, never followed: following it would warm (and judge)
// whatever it points to, such as production's host, not the instance.
func warmInstances(ctx context.Context, client *http.Client, wu *config.Warmup, entries []*consulapi.ServiceEntry) error {
	client = noRedirects(client)
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
			status, location, err := warmRequest(ctx, client, base+path, wu)
			switch {
			case err != nil:
				last = err.Error()
			case acceptedStatus(wu.Statuses, status):
				ok = true
			case location != "":
				last = fmt.Sprintf("status %d, a redirect to %s (redirects are not followed; list %d in statuses to accept it)", status, location, status)
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

// noRedirects is client as it is, except that it hands back a redirect instead of following it.
func noRedirects(client *http.Client) *http.Client {
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

// warmRequest answers the status of one request and, for a redirect, its Location.
func warmRequest(ctx context.Context, client *http.Client, url string, wu *config.Warmup) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, wu.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if wu.Host != "" {
		req.Host = wu.Host
	}
	req.Header.Set("User-Agent", "slotd-warmup")
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location"), nil
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

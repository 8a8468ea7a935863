package leader

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
)

// consulVersion is the Consul scripts/install-stack.sh builds (DESIGN.md §8).
const consulVersion = "v1.14.8"

// testNode names the Consul dev agent's node; sessions need it registered with serfHealth.
const testNode = "leader-test"

// consulBinary is the Consul `make stack` builds: $STACK_DIR, else the user cache folder.
func consulBinary(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("STACK_DIR")
	if dir == "" {
		cache, err := os.UserCacheDir()
		require.NoError(t, err, "find the user cache folder")
		dir = filepath.Join(cache, "slotd", "stack")
	}
	path := filepath.Join(dir, "consul-"+consulVersion, "consul")
	if _, err := os.Stat(path); err != nil {
		if testing.Short() {
			t.Skipf("consul %s is not built at %s (run make stack)", consulVersion, path)
		}
		t.Fatalf("consul %s is not built at %s: run make stack", consulVersion, path)
	}
	return path
}

// freePort finds a port free on 127.0.0.1 for TCP and, with udp, for UDP (Serf uses both).
func freePort(t testing.TB, udp bool) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err, "find a free port")
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if !udp {
			return port
		}
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			_ = pc.Close()
			return port
		}
	}
	t.Fatal("no free port for TCP and UDP after 20 tries")
	return 0
}

// startConsul starts a Consul dev agent on 127.0.0.1 and random ports, killed with the test,
// and returns its HTTP address once sessions can be created.
func startConsul(t testing.TB) string {
	t.Helper()
	bin := consulBinary(t)
	dir := t.TempDir()
	httpPort := freePort(t, false)
	cfg := map[string]any{
		"node_name":                   testNode,
		"data_dir":                    filepath.Join(dir, "data"),
		"bind_addr":                   "127.0.0.1",
		"client_addr":                 "127.0.0.1",
		"advertise_addr":              "127.0.0.1",
		"disable_update_check":        true,
		"disable_anonymous_signature": true,
		"ports": map[string]int{
			"http": httpPort, "https": -1, "dns": -1, "grpc": -1, "grpc_tls": -1,
			"server": freePort(t, false), "serf_lan": freePort(t, true), "serf_wan": freePort(t, true),
		},
	}
	data, err := json.Marshal(cfg)
	require.NoError(t, err)
	file := filepath.Join(dir, "consul.json")
	require.NoError(t, os.WriteFile(file, data, 0o644))
	var out bytes.Buffer
	cmd := exec.Command(bin, "agent", "-dev", "-config-file", file)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start(), "start consul")
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	c := consulClient(t, addr, nil)
	deadline := time.Now().Add(time.Minute)
	seen := ""
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("consul exited before it was ready:\n%s", out.String())
		case <-time.After(100 * time.Millisecond):
		}
		checks, _, err := c.Health().Node(testNode, nil)
		if err != nil {
			seen = err.Error()
			continue
		}
		seen = "node not registered yet"
		for _, ch := range checks {
			if ch.CheckID == "serfHealth" && ch.Status == consulapi.HealthPassing {
				return addr
			}
		}
	}
	t.Fatalf("consul not ready within a minute (last seen: %s):\n%s", seen, out.String())
	return ""
}

// consulClient is a client of the Consul at addr, through rt if set.
func consulClient(t testing.TB, addr string, rt http.RoundTripper) *consulapi.Client {
	t.Helper()
	cfg := &consulapi.Config{Address: addr, Scheme: "http"}
	if rt != nil {
		cfg.HttpClient = &http.Client{Transport: rt}
	}
	c, err := consulapi.NewClient(cfg)
	require.NoError(t, err, "consul client")
	return c
}

// testLogger logs to the test's log and keeps what it logged for assertions.
type testLogger struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func newTestLogger(t testing.TB, name string) (hclog.Logger, *testLogger) {
	w := &testLogger{t: t}
	return hclog.New(&hclog.LoggerOptions{Name: name, Output: w, Level: hclog.Debug}), w
}

func (w *testLogger) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return w.b.Write(p)
}

func (w *testLogger) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// blackhole stands between a client and Consul on loopback: it passes everything through until
// swallow, then drops open connections and holds every new one without an answer, as a Consul
// that hangs.
type blackhole struct {
	target string
	ln     net.Listener

	mu       sync.Mutex
	swallows bool
	conns    map[net.Conn]struct{}
}

func newBlackhole(t testing.TB, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err, "proxy listen")
	b := &blackhole{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	go b.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		b.dropAll()
	})
	return b
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }

// swallow makes the proxy a black hole from now on.
func (b *blackhole) swallow() {
	b.mu.Lock()
	b.swallows = true
	b.mu.Unlock()
	b.dropAll()
}

func (b *blackhole) dropAll() {
	b.mu.Lock()
	open := make([]net.Conn, 0, len(b.conns))
	for c := range b.conns {
		open = append(open, c)
	}
	b.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}

// track adds conns to the open connections, unless the proxy swallows by now: a pipe must
// not outlive swallow.
func (b *blackhole) track(conns ...net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.swallows {
		return false
	}
	for _, c := range conns {
		b.conns[c] = struct{}{}
	}
	return true
}

func (b *blackhole) untrack(conns ...net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range conns {
		delete(b.conns, c)
		_ = c.Close()
	}
}

func (b *blackhole) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		swallows := b.swallows
		b.mu.Unlock()
		if swallows {
			b.mu.Lock()
			b.conns[c] = struct{}{} // held, unanswered, until the test ends
			b.mu.Unlock()
			continue
		}
		go b.pipe(c)
	}
}

func (b *blackhole) pipe(c net.Conn) {
	up, err := net.DialTimeout("tcp", b.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	if !b.track(c, up) {
		_ = c.Close()
		_ = up.Close()
		return
	}
	defer b.untrack(c, up)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// renewals notes when the last renewal that Consul answered was sent, seen from the client.
type renewals struct {
	next http.RoundTripper

	mu   sync.Mutex
	last time.Time
}

func (r *renewals) RoundTrip(req *http.Request) (*http.Response, error) {
	sent := time.Now()
	resp, err := r.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusOK && strings.HasPrefix(req.URL.Path, renewPath) {
		r.mu.Lock()
		r.last = sent
		r.mu.Unlock()
	}
	return resp, err
}

// renewPath is where Consul's API renews a session.
const renewPath = "/v1/session/renew/"

func (r *renewals) lastAnswered() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

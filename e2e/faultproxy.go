package e2e

import (
	"net"
	"sync"
	"testing"
	"time"
)

// FaultProxy stands between slotd and Consul or Nomad on loopback so a test can make the
// server unreachable or hang without touching the agent: Cut refuses and drops every
// connection, Blackhole accepts and holds them without an answer, Delay slows every read,
// Heal lets everything through again.
type FaultProxy struct {
	target string
	ln     net.Listener

	mu    sync.Mutex
	mode  proxyMode
	delay time.Duration
	conns map[net.Conn]struct{}
}

type proxyMode int

const (
	proxyPass proxyMode = iota
	proxyCut
	proxyBlackhole
)

// NewFaultProxy listens on a free loopback port and forwards to target (host:port); it stops
// with the test.
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fault proxy: %v", err)
	}
	p := &FaultProxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's address, host:port.
func (p *FaultProxy) Addr() string { return p.ln.Addr().String() }

// Cut drops every open connection and refuses new ones until Heal.
func (p *FaultProxy) Cut() { p.set(proxyCut, 0, true) }

// Blackhole drops open connections and then accepts new ones but never answers until Heal.
func (p *FaultProxy) Blackhole() { p.set(proxyBlackhole, 0, true) }

// Delay makes every chunk of data wait d before it is passed on.
func (p *FaultProxy) Delay(d time.Duration) { p.set(proxyPass, d, false) }

// Heal lets everything through again; held connections are dropped so clients reconnect.
func (p *FaultProxy) Heal() { p.set(proxyPass, 0, true) }

func (p *FaultProxy) set(m proxyMode, d time.Duration, drop bool) {
	p.mu.Lock()
	p.mode, p.delay = m, d
	var open []net.Conn
	if drop {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}

func (p *FaultProxy) close() {
	_ = p.ln.Close()
	p.set(proxyCut, 0, true)
}

func (p *FaultProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *FaultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		switch mode {
		case proxyCut:
			_ = c.Close()
		case proxyBlackhole:
			p.track(c, true) // held, unanswered, until Heal or Cut drops it
		default:
			go p.pipe(c)
		}
	}
}

func (p *FaultProxy) pipe(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	p.track(c, true)
	p.track(up, true)
	defer func() {
		p.track(c, false)
		p.track(up, false)
		_ = c.Close()
		_ = up.Close()
	}()
	done := make(chan struct{}, 2)
	go func() { p.copy(up, c); done <- struct{}{} }()
	go func() { p.copy(c, up); done <- struct{}{} }()
	<-done
}

// copy passes data on, each chunk after the proxy's delay at the time it arrived.
func (p *FaultProxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			d := p.delay
			p.mu.Unlock()
			if d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a dropped connection: the other direction ends with it
		}
	}
}

package e2e

import (
	"fmt"
	"net"
	"strconv"
)

// Ports fixes the listening ports of a stack (WithPorts); a zero field means a free port.
type Ports struct {
	ConsulHTTP int
	NomadHTTP  int
	FabioProxy int
	FabioUI    int
}

// DemoPorts are the well-known ports slots.hcl.example and the agents' docs use.
var DemoPorts = Ports{ConsulHTTP: 8500, NomadHTTP: 4646, FabioProxy: 9999, FabioUI: 9998}

// portPicker hands out distinct free loopback ports. It holds each port's listener until
// release, so that it cannot hand out one port twice; the agents bind them right after.
type portPicker struct {
	held []interface{ Close() error }
	seen map[int]bool
}

// free asks the kernel for a free 127.0.0.1 port; with udp, the port is free for UDP too
// (Serf gossips over both).
func (pp *portPicker) free(udp bool) (int, error) {
	if pp.seen == nil {
		pp.seen = map[int]bool{}
	}
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pp.held = append(pp.held, ln)
		if pp.seen[port] {
			continue
		}
		if udp {
			pc, err := net.ListenPacket("udp", addr(port))
			if err != nil {
				continue // taken for UDP: try another
			}
			pp.held = append(pp.held, pc)
		}
		pp.seen[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("find a free port: no free port after 50 tries")
}

// fixed checks that a well-known port is free on 127.0.0.1 and holds it.
func (pp *portPicker) fixed(port int, what string) (int, error) {
	if pp.seen == nil {
		pp.seen = map[int]bool{}
	}
	ln, err := net.Listen("tcp", addr(port))
	if err != nil {
		return 0, fmt.Errorf("port %d for %s on 127.0.0.1 is taken (is another stack or demo running?): %w", port, what, err)
	}
	pp.held = append(pp.held, ln)
	pp.seen[port] = true
	return port, nil
}

func (pp *portPicker) release() {
	for _, c := range pp.held {
		_ = c.Close()
	}
	pp.held = nil
}

func addr(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

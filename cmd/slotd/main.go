// Command slotd is the deployment-slot daemon for Nomad and Consul and its command line.
package main

import (
	"os"

	"github.com/slotd/slotd/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}

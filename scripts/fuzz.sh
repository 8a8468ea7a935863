#!/usr/bin/env bash
# Runs every fuzz target of the module for the given time each (default 60s). The seed corpora
# under testdata/fuzz run with every `go test` anyway; this explores beyond them.
#
# -fuzzminimizetime 5s: Go spends up to 60s minimizing each new interesting input by default,
# uncounted, so a run can show 0 execs/sec for half its time (golang/go#51484).
set -euo pipefail
fuzztime=${1:-60s}
cd "$(dirname "$0")/.."
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file"); do
    echo "fuzz: $pkg $target for $fuzztime"
    go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s
  done
done

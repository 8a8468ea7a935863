#!/usr/bin/env bash
# Runs every fuzz target of the module for the given time each (default 60s). The seed corpora
# under testdata/fuzz run with every `go test` anyway; this explores beyond them.
#
# -fuzzminimizetime 5s: Go spends up to 60s minimizing each new interesting input by default,
# uncounted, so a run can show 0 execs/sec for half its time (golang/go#51484).
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline exceeded" as
# -fuzztime ends, having found nothing (golang/go#75804, fixed in Go 1.27). Such a run wrote
# no failing input under testdata/fuzz/<target>; it counts as passed once the target's corpus
# replays clean. Any other failure, and any written input, fails the run.
set -euo pipefail
fuzztime=${1:-60s}
cd "$(dirname "$0")/.."
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file"); do
    echo "fuzz: $pkg $target for $fuzztime"
    corpus="$pkg/testdata/fuzz/$target"
    before=$(ls "$corpus" 2>/dev/null | sort || true)
    log=$(mktemp)
    if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s 2>&1 | tee "$log"; then
      rm -f "$log"
      continue
    fi
    after=$(ls "$corpus" 2>/dev/null | sort || true)
    if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$log" &&
      [ "$(grep -c -- '^--- FAIL' "$log")" = 1 ]; then
      echo "fuzz: $target: Go's end-of-fuzztime race (golang/go#75804), no input written; replaying its corpus"
      rm -f "$log"
      go test "$pkg" -run "^${target}\$" -count=1
      continue
    fi
    rm -f "$log"
    exit 1
  done
done

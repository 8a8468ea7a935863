#!/usr/bin/env bash
# Builds the pinned Consul, Nomad, Fabio and Prometheus from the Go module proxy into a per-user
# cache, reusing a finished build.
# Usage: install-stack.sh [consul|nomad|fabio|prometheus]... (default: all four)
#
# A build is written under a temporary name and renamed into place only when it succeeded, so
# the cache never holds a half-written binary. STACK_DIR overrides the cache folder.
set -euo pipefail

CONSUL_VERSION=v1.14.8
NOMAD_VERSION=v1.6.1
FABIO_VERSION=v1.6.3
# Prometheus 3.x is published as the module's v0.3xx.y versions: v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_VERSION=v0.316.0
PROMETHEUS_RELEASE=3.16.0
# Only the Consul service discovery (file and http are always in): the other discoveries' SDKs
# are most of its build. No web UI assets (builtinassets): the tests use the HTTP API only.
PROMETHEUS_TAGS=remove_all_sd,enable_consul_sd
# The nomad api as of the v1.6.1 tag.
NOMAD_API_VERSION=v0.0.0-20230710102300-e8683e3f4958

# These two have no entry in the checksum database reachable here, so GONOSUMDB names exactly
# them, and their hashes are pinned here instead: a later download must match.
NOMAD_API_SUM="h1:/xe4sB88/W5sTLRuoq2surJTPCdC68pqkm7LIxxxocA="
FABIO_SUM="h1:ZLgQOjuLz66ABYI4qGVb2O6tHgu0ixNvsChTTtwg7Mo="

STACK_DIR=${STACK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/slotd/stack}
export GOFLAGS=-buildvcs=false
export GONOSUMDB=github.com/hashicorp/nomad/api,github.com/fabiolb/fabio
export CHECKPOINT_DISABLE=1
# Prometheus ships a go.work naming folders its module zip does not hold.
export GOWORK=off

log() { printf 'install-stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH; install Go 1.22 or newer first"

# download MODULE@VERSION [SUM]: prints the module's folder in the module cache.
download() {
  local mod=$1 want=${2:-} out dir sum
  if ! out=$(go mod download -json "$mod" 2>&1); then
    die "the module proxy did not give $mod: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-400)"
  fi
  dir=$(printf '%s' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  sum=$(printf '%s' "$out" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p')
  if printf '%s' "$out" | grep -q '"Error"'; then
    die "the module proxy did not give $mod: $(printf '%s' "$out" | grep '"Error"')"
  fi
  [ -n "$dir" ] && [ -d "$dir" ] || die "no folder for $mod after download"
  if [ -n "$want" ] && [ "$sum" != "$want" ]; then
    die "checksum mismatch for $mod: got $sum, pinned $want"
  fi
  printf '%s\n' "$dir"
}

# build NAME VERSION MODULE_DIR PREP_FUNC [PACKAGE]: copies the module, runs PREP_FUNC in it,
# builds PACKAGE (default: the module's root) with BUILD_TAGS and BUILD_LDFLAGS if set.
build() {
  local name=$1 version=$2 src=$3 prep=$4 pkg=${5:-.}
  local dest="$STACK_DIR/$name-$version" work said
  [ -n "$src" ] && [ -f "$src/go.mod" ] || die "no module source for $name $version"
  if [ -x "$dest/$name" ]; then
    log "$name $version already built at $dest/$name"
    return 0
  fi
  mkdir -p "$dest"
  work=$(mktemp -d "${TMPDIR:-/tmp}/slotd-stack-$name.XXXXXX")
  cleanup+=("$work" "$work.log" "$dest/.$name.tmp")
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  log "building $name $version (this takes a few minutes the first time)"
  (cd "$work" && "$prep") || die "preparing $name $version failed"
  if ! (cd "$work" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath \
      -tags "${BUILD_TAGS:-}" -ldflags "${BUILD_LDFLAGS:-}" -o "$dest/.$name.tmp" "$pkg") >"$work.log" 2>&1; then
    tail -30 "$work.log" >&2
    die "building $name $version failed (output above)"
  fi
  if [ -n "${BUILD_CHECK:-}" ]; then
    said=$("$dest/.$name.tmp" --version 2>&1 | head -1) || true
    case "$said" in
      *"$BUILD_CHECK"*) ;;
      *) die "the built $name does not say \"$BUILD_CHECK\" (--version said: ${said:-nothing})" ;;
    esac
  fi
  mv -f "$dest/.$name.tmp" "$dest/$name"
  log "built $name $version at $dest/$name"
}

prep_consul() {
  go mod edit -dropreplace=github.com/hashicorp/consul/api \
    -dropreplace=github.com/hashicorp/consul/sdk \
    -dropreplace=github.com/hashicorp/consul/proto-public \
    -require=github.com/hashicorp/consul/api@v1.18.1
}

prep_nomad() {
  go mod edit -dropreplace=github.com/hashicorp/nomad/api \
    -require=github.com/hashicorp/nomad/api@$NOMAD_API_VERSION
}

prep_none() { :; }

install_consul() {
  [ -x "$STACK_DIR/consul-$CONSUL_VERSION/consul" ] && { log "consul $CONSUL_VERSION already built"; return; }
  local src
  src=$(download "github.com/hashicorp/consul@$CONSUL_VERSION")
  build consul "$CONSUL_VERSION" "$src" prep_consul
}

install_nomad() {
  [ -x "$STACK_DIR/nomad-$NOMAD_VERSION/nomad" ] && { log "nomad $NOMAD_VERSION already built"; return; }
  local src
  download "github.com/hashicorp/nomad/api@$NOMAD_API_VERSION" "$NOMAD_API_SUM" >/dev/null
  src=$(download "github.com/hashicorp/nomad@$NOMAD_VERSION")
  CGO_ENABLED=1 build nomad "$NOMAD_VERSION" "$src" prep_nomad
}

install_fabio() {
  [ -x "$STACK_DIR/fabio-$FABIO_VERSION/fabio" ] && { log "fabio $FABIO_VERSION already built"; return; }
  local src
  src=$(download "github.com/fabiolb/fabio@$FABIO_VERSION" "$FABIO_SUM")
  build fabio "$FABIO_VERSION" "$src" prep_none
}

install_prometheus() {
  [ -x "$STACK_DIR/prometheus-$PROMETHEUS_VERSION/prometheus" ] && { log "prometheus $PROMETHEUS_VERSION already built"; return; }
  local src v=github.com/prometheus/common/version
  src=$(download "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")
  BUILD_TAGS=$PROMETHEUS_TAGS BUILD_CHECK="version $PROMETHEUS_RELEASE" \
    BUILD_LDFLAGS="-X $v.Version=$PROMETHEUS_RELEASE -X $v.Revision=$PROMETHEUS_VERSION" \
    build prometheus "$PROMETHEUS_VERSION" "$src" prep_none ./cmd/prometheus
}

# Module downloads need a module context that is not ours; an empty temp module works.
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT
scratch=$(mktemp -d "${TMPDIR:-/tmp}/slotd-stack-mod.XXXXXX")
cleanup+=("$scratch")
cd "$scratch"
go mod init slotd-stack-scratch >/dev/null 2>&1

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(consul nomad fabio prometheus)
for t in "${targets[@]}"; do
  case "$t" in
    consul|nomad|fabio|prometheus) "install_$t" ;;
    *) die "unknown component '$t' (want consul, nomad, fabio or prometheus)" ;;
  esac
done

#!/usr/bin/env bash
# Cost of exec tracing (tracing.disable_exec): one run executes /bin/true N times (default
# 1000) and times the loop inside the container, with tracing on (the default) and off
# (tracing.disable_exec: true); prints the time per exec of each, the ratio, and the mean
# start-up of `moat run -- true` both ways (M runs, default 5). Asserts nothing.
# Needs a Docker engine and the base image. BIN=target/debug uses an existing debug build
# instead of building release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
m=${2:-5}
if [ -z "${BIN:-}" ]; then
	cargo build -q --release -p moat -p moat-launch -p moat-proxy -p moat-audit -p moat-grant -p moat-sshd-filter
	BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
export PATH=$(cd "$BIN" && pwd):$PATH
export MOAT_HOME=${MOAT_HOME:-$(mktemp -d /tmp/moat-bench.XXXXXX)}
ws=$(mktemp -d /tmp/moat-bench-ws.XXXXXX)
trap 'rm -rf "$ws"' EXIT
cd "$ws"
moat-launch image bootstrap >/dev/null 2>&1

loop="s=\$(date +%s%N); i=0; while [ \$i -lt $n ]; do /bin/true; i=\$((i+1)); done; e=\$(date +%s%N); echo loop-ns \$((e-s))"
per_exec() { # prints microseconds per exec
	local ns
	ns=$(moat-launch run --no-sandbox -- sh -c "$loop" 2>/dev/null | tr -d '\r' | sed -n 's/^loop-ns //p')
	[ -n "$ns" ] || { echo "bench: the run printed no timing" >&2; exit 1; }
	echo "$ns / $n / 1000" | bc -l
}
now() { date +%s.%N; }
startup() {
	local t0 t1 total=0
	for _ in $(seq "$m"); do
		t0=$(now)
		moat-launch run --no-sandbox -- true >/dev/null 2>&1
		t1=$(now)
		total=$(echo "$total + $t1 - $t0" | bc -l)
	done
	echo "$total / $m" | bc -l
}

rm -f moat.yaml
moat-launch run --no-sandbox -- true >/dev/null 2>&1 # warm up (builds the run image)
on=$(per_exec)
on_start=$(startup)
printf 'tracing:\n  disable_exec: true\n' >moat.yaml
moat-launch trust --yes . >/dev/null 2>&1
moat-launch run --no-sandbox -- true >/dev/null 2>&1
off=$(per_exec)
off_start=$(startup)
printf 'exec of /bin/true, tracing on:  %8.1f us (mean of %d)\n' "$on" "$n"
printf 'exec of /bin/true, tracing off: %8.1f us (mean of %d)\n' "$off" "$n"
printf 'ratio on/off: %.2f; overhead per exec: %.1f us\n' "$(echo "$on / $off" | bc -l)" "$(echo "$on - $off" | bc -l)"
printf 'moat run -- true, tracing on:   %.3f s (mean of %d)\n' "$on_start" "$m"
printf 'moat run -- true, tracing off:  %.3f s (mean of %d)\n' "$off_start" "$m"
moat-launch clean --force >/dev/null 2>&1 || true

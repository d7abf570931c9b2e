#!/usr/bin/env bash
# Start-up cost of a moat run against a bare `docker run` of the same image, in one session:
#   moat run --no-sandbox -- true     vs     docker run --rm <the run's image> true
# Prints the mean wall time of each over N runs (default 10) and their ratio (target <= 1.5).
# Needs a Docker engine and the base image (moat-launch image bootstrap); builds if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
cargo build -q --release -p moat -p moat-launch -p moat-proxy -p moat-audit -p moat-grant -p moat-sshd-filter
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
export PATH=$bin:$PATH
export MOAT_HOME=${MOAT_HOME:-$(mktemp -d /tmp/moat-bench.XXXXXX)}
ws=$(mktemp -d /tmp/moat-bench-ws.XXXXXX)
trap 'rm -rf "$ws"' EXIT
cd "$ws"

moat-launch image bootstrap >/dev/null 2>&1
# Warm up: builds the run image once, and tells us its tag.
moat run --no-sandbox -- true >/dev/null 2>&1
id=$(ls -t "$MOAT_HOME/runs" | head -1)
image=$(sed -n 's/.*"image": "\(.*\)".*/\1/p' "$MOAT_HOME/runs/$id/metadata.json")
[ -n "$image" ] || { echo "bench: could not find the run's image" >&2; exit 1; }
docker run --rm "$image" true >/dev/null 2>&1 || true

now() { date +%s.%N; }
time_it() {
	local t0 t1 total=0
	for _ in $(seq "$n"); do
		t0=$(now)
		"$@" >/dev/null 2>&1
		t1=$(now)
		total=$(echo "$total + $t1 - $t0" | bc -l)
	done
	echo "$total / $n" | bc -l
}
# docker run with the entrypoint bypassed: the bare cost of a container of that image.
docker_mean=$(time_it docker run --rm --entrypoint true "$image")
moat_mean=$(time_it moat run --no-sandbox -- true)
ratio=$(echo "$moat_mean / $docker_mean" | bc -l)
printf 'docker run --rm %s true: %.3f s (mean of %d)\n' "$image" "$docker_mean" "$n"
printf 'moat run -- true:                   %.3f s (mean of %d)\n' "$moat_mean" "$n"
printf 'ratio: %.2f (target <= 1.5)\n' "$ratio"
moat clean --force >/dev/null 2>&1 || true

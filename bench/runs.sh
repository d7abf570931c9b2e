#!/usr/bin/env bash
# Many runs at once, each figure beside a baseline from the same invocation:
#   - start latency, one run:  moat run -- true  vs  docker run --rm <image> true (mean of 5)
#   - start latency, parallel: P x `moat run -d -- sleep 600` vs P x `docker run -d <image>
#     sleep 600`, time until every one is running (P = 16, and MAX when it is more)
#   - host memory per run at 1, 8 and MAX runs: the summed RSS (from /proc) of each run's
#     host-side processes (the supervisor and its children: proxy, audit writer)
#   - `moat list` and `moat status` with 1,000 stopped runs in MOAT_HOME (synthetic run
#     directories, as moat-files(5) describes them) beside `ls -l` of the same directories
# Usage: bench/runs.sh [MAX]   (MAX defaults to 16; 32 checks that 32 runs start at once)
# MOAT_BENCH_BIN=DIR uses the moat binaries in DIR instead of building them (release).
# Needs a Docker engine and the base image (moat-launch image bootstrap). It stops and
# removes every run and container it started; the last run leaves its spare network (and
# spare guard) for the next run, as every run does (network.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-16}
case "$max" in '' | *[!0-9]*) echo "usage: bench/runs.sh [MAX]" >&2; exit 64 ;; esac
if [ -n "${MOAT_BENCH_BIN:-}" ]; then
	bin=$MOAT_BENCH_BIN
else
	cargo build -q --release -p moat -p moat-launch -p moat-proxy -p moat-audit -p moat-grant -p moat-sshd-filter
	bin=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
export PATH=$bin:$PATH
export MOAT_HOME=$(mktemp -d /tmp/moat-bench-runs.XXXXXX)
ws=$(mktemp -d /tmp/moat-bench-ws.XXXXXX)
dockers=()
cleanup() {
	set +e
	for id in $(ls "$MOAT_HOME/runs" 2>/dev/null); do
		moat stop "$id" >/dev/null 2>&1 &
	done
	wait
	[ ${#dockers[@]} -eq 0 ] || docker rm -f "${dockers[@]}" >/dev/null 2>&1
	rm -rf "$ws" "$MOAT_HOME"
}
trap cleanup EXIT
cd "$ws"

ms() { echo $(($(date +%s%N) / 1000000)); }

moat-launch image bootstrap >/dev/null 2>&1
# Warm up: builds the run image once, and tells us its tag.
moat run --no-sandbox -- true >/dev/null 2>&1
id=$(ls -t "$MOAT_HOME/runs" | head -1)
image=$(sed -n 's/.*"image": "\(.*\)".*/\1/p' "$MOAT_HOME/runs/$id/metadata.json")
[ -n "$image" ] || { echo "bench: could not find the run's image" >&2; exit 1; }
docker run --rm --entrypoint true "$image" >/dev/null 2>&1 || true

ratio() { echo "scale=2; $1 / $2" | bc -l; }
row() { printf '%-44s %9s %9s %6s\n' "$@"; }
row "figure" "moat" "baseline" "ratio"

# --- single start (mean of 5, interleaved)
dt=0 mt=0
for _ in 1 2 3 4 5; do
	t0=$(ms); docker run --rm --entrypoint true "$image" >/dev/null 2>&1; t1=$(ms)
	moat run --no-sandbox -- true >/dev/null 2>&1; t2=$(ms)
	dt=$((dt + t1 - t0)) mt=$((mt + t2 - t1))
done
row "start, one run (ms, mean of 5)" $((mt / 5)) $((dt / 5)) "$(ratio $mt $dt)"

# --- parallel starts
parallel_start() {
	local p=$1 t0 t1 t2 i fails=0
	t0=$(ms)
	for i in $(seq "$p"); do
		docker run -d --entrypoint sleep --label moat.bench=1 "$image" 600 >"$ws/d.$i" 2>&1 &
	done
	wait
	t1=$(ms)
	for i in $(seq "$p"); do dockers+=("$(cat "$ws/d.$i")"); done
	docker rm -f "${dockers[@]}" >/dev/null 2>&1 || true
	dockers=()
	t1b=$(ms)
	for i in $(seq "$p"); do
		moat run -d --no-sandbox -n "p$p-$i" -- sleep 600 >"$ws/m.$i" 2>"$ws/m.$i.err" &
	done
	for j in $(jobs -p); do wait "$j" || fails=$((fails + 1)); done
	t2=$(ms)
	local up
	up=$(moat list --json | grep -c '"state":"running"' || true)
	row "start, $p in parallel (ms; $up running)" $((t2 - t1b)) $((t1 - t0)) "$(ratio $((t2 - t1b)) $((t1 - t0)))"
	if [ "$fails" -gt 0 ] || [ "$up" -lt "$p" ]; then
		echo "bench: $fails of $p moat runs failed to start:" >&2
		cat "$ws"/m.*.err | sort | uniq -c | sort -rn | head -5 >&2
	fi
}

# RSS (KiB) of a process and all its descendants.
rss_tree() {
	local pid=$1 kb c
	kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
	for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
		kb=$((kb + $(rss_tree "$c")))
	done
	echo "${kb:-0}"
}
# PSS (KiB): the process tree's share of the pages it shares with other runs (the
# binaries' pages are shared by every run; RSS counts them in full for each).
pss_tree() {
	local pid=$1 kb c
	kb=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
	for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
		kb=$((kb + $(pss_tree "$c")))
	done
	echo "${kb:-0}"
}
# Mean host-side RSS and PSS per running run (MiB, one decimal), from each run's supervisor.
mem_per_run() {
	local rss=0 pss=0 n=0 pid
	for pid in $(sed -n 's/.*"supervisor_pid": \([0-9]*\).*/\1/p' "$MOAT_HOME"/runs/*/metadata.json); do
		[ -d "/proc/$pid" ] || continue
		rss=$((rss + $(rss_tree "$pid"))) pss=$((pss + $(pss_tree "$pid"))) n=$((n + 1))
	done
	[ "$n" -gt 0 ] || { echo "0 0 0"; return; }
	echo "$(echo "scale=1; $rss / $n / 1024" | bc -l) $(echo "scale=1; $pss / $n / 1024" | bc -l) $n"
}
stop_all() {
	for id in $(moat list --json | sed -n 's/.*"id":"\([^"]*\)".*"state":"running".*/\1/p'); do
		moat stop "$id" >/dev/null 2>&1 &
	done
	wait
}

declare -A mem
mem_at() {
	local k=$1 i
	stop_all
	for i in $(seq "$k"); do
		moat run -d --no-sandbox -n "m$k-$i" -- sleep 600 >/dev/null 2>&1 &
	done
	wait
	sleep 2
	read -r rss pss n < <(mem_per_run)
	mem[$k]="RSS $rss MiB, PSS $pss MiB ($n runs)"
}

parallel_start 16
stop_all
if [ "$max" -gt 16 ]; then
	parallel_start "$max"
	stop_all
fi
for k in 1 8 "$max"; do mem_at "$k"; done
stop_all
for k in 1 8 "$max"; do
	printf '%-44s %s\n' "host memory per run, $k running" "${mem[$k]}"
done

# --- list/status with 1,000 runs
tmpl=$(ls -t "$MOAT_HOME/runs" | head -1)
for i in $(seq 1000); do
	sid=$(printf 'run_%012x' "$((0xb0000000 + i))")
	mkdir -p "$MOAT_HOME/runs/$sid"
	sed -e "s/\"id\": \"[^\"]*\"/\"id\": \"$sid\"/" -e "s/\"name\": \"[^\"]*\"/\"name\": \"bench-$i\"/" \
		-e 's/"state": "[a-z]*"/"state": "stopped"/' \
		"$MOAT_HOME/runs/$tmpl/metadata.json" >"$MOAT_HOME/runs/$sid/metadata.json"
done
runs=$(ls "$MOAT_HOME/runs" | wc -l)
best() { # best of 3, ms
	local b=999999 t0 t1 _
	for _ in 1 2 3; do
		t0=$(ms); "$@" >/dev/null 2>&1; t1=$(ms)
		[ $((t1 - t0)) -lt "$b" ] && b=$((t1 - t0))
	done
	echo "$b"
}
lst=$(best ls -l "$MOAT_HOME"/runs/)
dit=$(best docker images --filter label=moat.image=1)
lt=$(best moat list)
st=$(best moat status)
row "moat list, $runs runs (ms, best of 3)" "$lt" "$lst" "$(ratio "$lt" "$((lst > 0 ? lst : 1))")"
row "moat status, $runs runs (ms, best of 3)" "$st" "$lst" "$(ratio "$st" "$((lst > 0 ? lst : 1))")"
row "  the engine's image list (ms, best of 3)" "-" "$dit" "-"
echo "baselines: docker run --rm/-d of the run's image; ls -l of the runs directory;"
echo "  docker images --filter label=moat.image=1 (the engine's image list, which status waits for)"

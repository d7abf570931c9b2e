#!/bin/sh
# Benchmark shell completion's live lookups: the time of one `moat __complete` call (what
# each TAB runs) on a MOAT_HOME with RUNS runs, beside `ls` of the same runs/ directory as a
# baseline, measured in the same invocation. Cases: run names with runs/.names (as moat-launch
# writes it), the same without it (every metadata.json read: runs made before the file
# existed), and credential names. Prints figures; it asserts nothing.
#
# usage: bench/complete.sh [RUNS] [CALLS]     (defaults 1000 and 200)
#   MOAT_BIN  the moat binary to time (default: a release build made here)
set -eu

RUNS=${1:-1000}
CALLS=${2:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ -z "${MOAT_BIN:-}" ]; then
  echo "building release moat ..." >&2
  cargo build --release -q -p moat
  MOAT_BIN="$root/target/release/moat"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-complete-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
export MOAT_HOME="$work/home"
runs="$MOAT_HOME/runs"
mkdir -p "$runs" "$MOAT_HOME/credentials"

# RUNS run directories as moat-files(5) describes them, and their lines in runs/.names.
i=0
while [ "$i" -lt "$RUNS" ]; do
  id=$(printf 'run_%012x' "$i")
  mkdir -m 700 "$runs/$id"
  printf '{\n  "v": 1,\n  "id": "%s",\n  "name": "bench-%d",\n  "agent": "",\n  "workspace": "/work/ws",\n  "grants": ["github"],\n  "state": "stopped",\n  "runtime": "docker",\n  "created_at": "2026-01-01T00:00:00.000Z"\n}\n' "$id" "$i" > "$runs/$id/metadata.json"
  printf '%s bench-%d\n' "$id" "$i" >> "$runs/.names"
  i=$((i + 1))
done
i=0
while [ "$i" -lt 50 ]; do
  head -c 64 /dev/urandom > "$MOAT_HOME/credentials/grant-$i.enc"
  i=$((i + 1))
done

now() { date +%s.%N; }
# per_call LABEL CMD...: run CMD CALLS times, print the mean wall time per call.
per_call() {
  label=$1; shift
  "$@" > /dev/null 2>&1 # warm the page cache
  t0=$(now)
  n=0
  while [ "$n" -lt "$CALLS" ]; do
    "$@" > /dev/null 2>&1
    n=$((n + 1))
  done
  t1=$(now)
  awk -v a="$t0" -v b="$t1" -v n="$CALLS" -v l="$label" \
    'BEGIN { printf "%-44s %7.2f ms/call\n", l, (b - a) * 1000 / n }'
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "MOAT_HOME: $RUNS runs, 50 credentials; $CALLS calls per figure; binary $MOAT_BIN"
cands=$("$MOAT_BIN" __complete 2 moat logs '' | wc -l)
echo "candidates for 'moat logs <TAB>': $((cands - 1))"
echo
per_call "baseline: ls runs/" ls "$runs"
per_call "moat __complete: logs (runs/.names)" "$MOAT_BIN" __complete 2 moat logs ''
per_call "moat __complete: revoke (credentials/)" "$MOAT_BIN" __complete 2 moat revoke ''
per_call "moat __complete: a command word" "$MOAT_BIN" __complete 1 moat lo
mv "$runs/.names" "$work/names"
per_call "moat __complete: logs (no .names: metadata)" "$MOAT_BIN" __complete 2 moat logs ''
mv "$work/names" "$runs/.names"
per_call "baseline: ls runs/ (again)" ls "$runs"

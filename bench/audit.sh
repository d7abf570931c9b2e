#!/bin/sh
# Benchmark moat-audit: append throughput with a checkpoint every second, the time to verify
# a 1,000,000-entry log, and proof sizes (inclusion and consistency) as the log grows, to
# show they stay O(log n). Prints figures; it asserts nothing.
#
# usage: bench/audit.sh [ENTRIES]     (default 1000000)
set -eu

N=${1:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "building release moat-audit ..." >&2
cargo build --release -q -p moat-audit
B="$root/target/release/moat-audit"

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-audit-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
export MOAT_HOME="$work/home"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%d", n / s }'; }

events="$work/events.jsonl"
awk -v n="$N" 'BEGIN {
  for (i = 0; i < n; i++)
    printf "{\"v\":1,\"type\":\"credential_used\",\"grant\":\"github\",\"host\":\"api.github.com\",\"request_id\":\"req%d\",\"method\":\"GET\",\"status\":200}\n", i
}' > "$events"

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "records: $N ($(wc -c < "$events") bytes of JSON lines)"
echo

echo "== append (checkpoint at least every 1 s, and every 100000 entries) =="
t0=$(now)
cat "$events" | "$B" append --run run_bench --checkpoint-interval 1 > /dev/null
t1=$(now)
secs=$(elapsed "$t0" "$t1")
cps=$(grep -c '^moat-audit/run_bench$' "$MOAT_HOME/runs/run_bench/audit/checkpoints")
printf 'append:  %d entries in %.3f s = %d entries/s (%d checkpoints)\n' "$N" "$secs" "$(rate "$N" "$secs")" "$cps"

echo "== append (time-based checkpoints only, every 1 s) =="
t0=$(now)
"$B" append --run run_bench2 --checkpoint-interval 1 --checkpoint-every 1000000000000 < "$events" > /dev/null
t1=$(now)
secs=$(elapsed "$t0" "$t1")
cps=$(grep -c '^moat-audit/run_bench2$' "$MOAT_HOME/runs/run_bench2/audit/checkpoints")
printf 'append:  %d entries in %.3f s = %d entries/s (%d checkpoints)\n' "$N" "$secs" "$(rate "$N" "$secs")" "$cps"
echo

echo "== verify $N entries ($(wc -c < "$MOAT_HOME/runs/run_bench/audit/log.jsonl") bytes of log) =="
for i in 1 2 3; do
  t0=$(now)
  "$B" verify run_bench > /dev/null
  t1=$(now)
  printf 'verify:  run %d: %.3f s\n' "$i" "$(elapsed "$t0" "$t1")"
done
echo

echo "== proof sizes =="
# One hash is 32 bytes; a proof of k hashes is k*32 bytes (base64 in the bundle).
count_proofs() {
  # $1 = bundle; prints the hash count of each inclusion proof, then of each consistency proof
  if command -v python3 > /dev/null; then
    python3 - "$1" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
inc = ", ".join(f"entry {e['index']}: {len(e['inclusion']['proof'])}" for e in b["entries"])
con = ", ".join(f"{p['size1']}->{p['size2']}: {len(p['proof'])}" for p in b["consistency"])
print(f"  inclusion (hashes)   {inc}")
print(f"  consistency (hashes) {con}")
PY
  else
    echo "  (python3 not found: total proof hashes $(grep -o '"[A-Za-z0-9+/]\{43\}="' "$1" | wc -l))"
  fi
}
n=1000
while [ "$n" -le "$N" ]; do
  run="run_size$n"
  head -n "$n" "$events" | "$B" append --run "$run" --checkpoint-every $((n / 4 + 1)) > /dev/null 2>&1
  last=$((n - 1)); mid=$((n / 2))
  "$B" export "$run" -o "$work/p$n.json" --entry 0 --entry "$mid" --entry "$last" 2> /dev/null
  printf 'n=%-8d bundle of 3 entries with proofs: %d bytes\n' "$n" "$(wc -c < "$work/p$n.json")"
  count_proofs "$work/p$n.json"
  n=$((n * 10))
done

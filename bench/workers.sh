#!/usr/bin/env bash
# Throughput of sippool with runtime.workers = 1, 2, ... in one sitting (issue 18), with
# ../shared/bench/run.sh; prints one line per worker count: calls, failures, proxy CPU
# seconds per 1000 calls, p50/p99 INVITE->200 and how busy the machine was.
#
#   bench/workers.sh [RATE] [CALLS] [WORKERS...]     default 500 cps, 10000 calls, 1 2
#   UAC_EXTRA='-t un' bench/workers.sh 4000 40000    a socket per call: the kernel spreads
#                                                    the calls over the workers (one SIPp
#                                                    socket hashes to one worker)
#   MODE=maxrate bench/workers.sh - - 1 2            run.sh maxrate instead
#
# Addresses: BENCH_PROXY_IP, BENCH_PRIMARY_IP, BENCH_BACKUP_IP, BENCH_UAC_IP (default
# 127.0.5.10, .11, .12 and .1). Needs a release build (SIPPOOL_BIN to use another binary).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${BENCH_HARNESS:-$ROOT/../shared/bench/run.sh}"
RATE="${1:-500}"
CALLS="${2:-10000}"
shift $(( $# < 2 ? $# : 2 ))
[ $# -gt 0 ] && WORKERS=("$@") || WORKERS=(1 2)
MODE="${MODE:-throughput}"
BIN="${SIPPOOL_BIN:-$ROOT/target/release/sippool}"
[ -x "$HARNESS" ] || { echo "workers.sh: harness $HARNESS not found" >&2; exit 2; }
[ -x "$BIN" ] || { echo "workers.sh: no release build at $BIN" >&2; exit 2; }
export BENCH_PROXY_IP="${BENCH_PROXY_IP:-127.0.5.10}"
export BENCH_PRIMARY_IP="${BENCH_PRIMARY_IP:-127.0.5.11}"
export BENCH_BACKUP_IP="${BENCH_BACKUP_IP:-127.0.5.12}"
export BENCH_UAC_IP="${BENCH_UAC_IP:-127.0.5.1}"
CONF=$(mktemp /tmp/sippool-workers-bench.XXXXXX.toml)
trap 'rm -f "$CONF"' EXIT
sed -e "s/127\.0\.0\.10/$BENCH_PROXY_IP/g" -e "s/127\.0\.0\.11/$BENCH_PRIMARY_IP/g" \
  -e "s/127\.0\.0\.12/$BENCH_BACKUP_IP/g" "$ROOT/bench/bench.toml" >"$CONF"

value() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k{print $2}'; }

printf '%-8s %7s %7s %10s %8s %8s %8s %8s %10s\n' workers ok failed cpu_s/1k p50_ms p99_ms cps busy_pct extra
for w in "${WORKERS[@]}"; do
  cmd="SIPPOOL__RUNTIME__WORKERS=$w SIPPOOL__OVERLOAD__INVITE_RATE=\$INVITE_RATE exec $BIN run --config $CONF"
  if [ "$MODE" = maxrate ]; then
    line=$(PROXY_CMD="$cmd" "$HARNESS" maxrate custom | tail -1)
  else
    line=$(PROXY_CMD="$cmd" "$HARNESS" throughput custom "$RATE" "$CALLS" | tail -1)
  fi
  echo "workers=$w $line" >&2
  if [ "$MODE" = maxrate ]; then
    printf 'workers=%s maxrate_cps=%s p99_le_100ms_cps=%s first_bad=%s (%s)\n' "$w" \
      "$(value "$line" maxrate_cps)" "$(value "$line" maxrate_p99_le_100ms_cps)" \
      "$(value "$line" first_bad_cps)" "$(value "$line" first_bad_reason)"
  else
    printf '%-8s %7s %7s %10s %8s %8s %8s %8s %10s\n' "$w" "$(value "$line" ok)" \
      "$(value "$line" failed)" "$(value "$line" proxy_cpu_s_per_1k_calls)" \
      "$(value "$line" lat_p50_ms)" "$(value "$line" lat_p99_ms)" \
      "$(value "$line" achieved_cps)" "$(value "$line" machine_busy_pct)" "${UAC_EXTRA:--}"
  fi
done

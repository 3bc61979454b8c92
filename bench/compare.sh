#!/usr/bin/env bash
# Measures sippool and Kamailio in one sitting with ../shared/bench/run.sh and prints the
# proxy CPU seconds per 1000 calls of each and their ratio (sippool / Kamailio).
#
#   bench/compare.sh [RATE] [CALLS]        default 500 cps, 10000 calls, UDP
#   TRANSPORT=tcp bench/compare.sh ...     caller leg over TCP
#
# Needs: ../shared/bench/setup.sh run once (Kamailio, SIPp), and a release build
# (the script runs `cargo build --release` itself).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${BENCH_HARNESS:-$ROOT/../shared/bench/run.sh}"
RATE="${1:-500}"
CALLS="${2:-10000}"
[ -x "$HARNESS" ] || { echo "compare.sh: harness $HARNESS not found" >&2; exit 2; }
(cd "$ROOT" && cargo build --release --quiet)

value() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k{print $2}'; }

run() {
  local proxy=$1 line
  if [ "$proxy" = custom ]; then
    line=$(PROXY_CMD="SIPPOOL__OVERLOAD__INVITE_RATE=\$INVITE_RATE exec $ROOT/target/release/sippool run --config $ROOT/bench/bench.toml" \
      "$HARNESS" throughput custom "$RATE" "$CALLS" | tail -1)
  else
    line=$("$HARNESS" throughput kamailio "$RATE" "$CALLS" | tail -1)
  fi
  echo "$line" >&2
  echo "$line"
}

kam=$(run kamailio)
sp=$(run custom)
k_cpu=$(value "$kam" proxy_cpu_s_per_1k_calls)
s_cpu=$(value "$sp" proxy_cpu_s_per_1k_calls)
printf '%-10s %8s %8s %10s %10s %10s\n' proxy ok failed cpu_s/1k p99_ms peak_pss_kb
for name in kamailio sippool; do
  if [ $name = kamailio ]; then l=$kam; else l=$sp; fi
  printf '%-10s %8s %8s %10s %10s %10s\n' $name "$(value "$l" ok)" "$(value "$l" failed)" \
    "$(value "$l" proxy_cpu_s_per_1k_calls)" "$(value "$l" lat_p99_ms)" "$(value "$l" peak_pss_kb)"
done
python3 -c "import sys; k,s=float(sys.argv[1]),float(sys.argv[2]); print(f'ratio sippool/kamailio cpu per call: {s/k:.2f}')" "$k_cpu" "$s_cpu"

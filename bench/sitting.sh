#!/usr/bin/env bash
# Every figure of issue 18, sippool against Kamailio in one sitting, alternating the two
# proxies figure by figure, with ../shared/bench/run.sh (the same topology, scenario and
# SIPp load for both):
#
#   instructions per call    bench/callgrind.sh (1000 calls at 50/s, idle run subtracted)
#   CPU per 1000 calls, p99  run.sh throughput at 500 cps (10,000 calls) and 6000 cps (36,000)
#   highest rate             run.sh maxrate, steps past 10,000 cps (MAXRATE_STEPS below)
#
#   bench/sitting.sh [BINARY]            default target/release/sippool (build it first;
#                                        the shipped build is scripts/build-pgo's
#                                        target/pgo/release/sippool)
#   FIGURES="callgrind t500 t6000 maxrate"   which figures (default all, in this order)
#   REPEAT=1                             runs per figure and proxy (CPU time moves 10-20 %
#                                        between runs on a shared VM; instructions do not)
#   MAXRATE_STEPS="..."                  default 2000 4000 6000 8000 10000 12000 14000 16000
#   CONFIG=bench/bench.toml              sippool's configuration
#
# Prints one line per run (the harness's key=value line, prefixed with the figure and the
# proxy), then a table with sippool/Kamailio, the ratio of the means. Exit 1 when a run
# fails (a failed call included: every figure must have zero failed calls). Takes about 15
# minutes with every figure once.
set -euo pipefail
export LC_ALL=C

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${BENCH_HARNESS:-$ROOT/../shared/bench/run.sh}"
BIN="${1:-$ROOT/target/release/sippool}"
CONFIG="${CONFIG:-$ROOT/bench/bench.toml}"
FIGURES="${FIGURES:-callgrind t500 t6000 maxrate}"
REPEAT="${REPEAT:-1}"
export MAXRATE_STEPS="${MAXRATE_STEPS:-2000 4000 6000 8000 10000 12000 14000 16000}"

[ -x "$HARNESS" ] || { echo "sitting.sh: harness $HARNESS not found" >&2; exit 2; }
[ -x "$BIN" ] || { echo "sitting.sh: binary $BIN not found: cargo build --release" >&2; exit 2; }
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

value() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k{print $2}'; }

# One harness run of `figure` for `proxy` (kamailio or sippool); prints its result line.
run() {
  local figure=$1 proxy=$2 mode=custom line
  [ "$proxy" = kamailio ] && mode=kamailio
  local cmd="SIPPOOL__OVERLOAD__INVITE_RATE=\$INVITE_RATE exec $BIN run --config $CONFIG"
  case $figure in
    callgrind)
      if [ "$proxy" = kamailio ]; then
        line=$(PROXY=kamailio bash "$ROOT/bench/callgrind.sh" | tail -1)
      else
        line=$(PROXY=sippool CONFIG=$CONFIG bash "$ROOT/bench/callgrind.sh" "$BIN" | tail -1)
      fi
      ;;
    t500) line=$(PROXY_CMD="$cmd" "$HARNESS" throughput $mode 500 10000 | tail -1) ;;
    t6000) line=$(PROXY_CMD="$cmd" "$HARNESS" throughput $mode 6000 36000 | tail -1) ;;
    maxrate) line=$(PROXY_CMD="$cmd" "$HARNESS" maxrate $mode | tail -1) ;;
    *) echo "sitting.sh: unknown figure $figure" >&2; exit 2 ;;
  esac
  echo "figure=$figure proxy=$proxy $line"
}

declare -A RESULT
status=0
for figure in $FIGURES; do
  for i in $(seq "$REPEAT"); do
    for proxy in kamailio sippool; do
      line=$(run "$figure" "$proxy") || { echo "sitting.sh: $figure $proxy failed" >&2; status=1; continue; }
      echo "$line"
      failed=$(value "$line" failed)
      if [ -n "$failed" ] && [ "$failed" != 0 ]; then
        echo "sitting.sh: $figure $proxy had $failed failed calls" >&2
        status=1
      fi
      case $figure in
        callgrind) v=$(value "$line" instructions_per_call) ;;
        t500 | t6000) v="$(value "$line" proxy_cpu_s_per_1k_calls)/$(value "$line" lat_p99_ms)" ;;
        maxrate) v="$(value "$line" maxrate_cps)/$(value "$line" maxrate_p99_le_100ms_cps)" ;;
      esac
      RESULT[$figure,$proxy]="${RESULT[$figure,$proxy]:-}${RESULT[$figure,$proxy]:+ }$v"
    done
  done
done

# sippool's mean over Kamailio's mean of the first number of each run (instructions, CPU
# s per 1000 calls); empty for maxrate (a rate, not a cost) or when a side has no run.
ratio() {
  local k=$1 s=$2
  [ -n "$k" ] && [ -n "$s" ] || return 0
  awk -v k="$k" -v s="$s" 'function mean(list,   n, a, i, t) {
      n = split(list, a, " "); t = 0
      for (i = 1; i <= n; i++) { split(a[i], v, "/"); t += v[1] }
      return t / n
    }
    BEGIN { printf "ratio=%.2f", mean(s) / mean(k) }'
}

echo
printf '%-10s %-34s %-34s %s\n' figure kamailio sippool sippool/kamailio
for figure in $FIGURES; do
  r=""
  [ "$figure" = maxrate ] || r=$(ratio "${RESULT[$figure,kamailio]:-}" "${RESULT[$figure,sippool]:-}")
  printf '%-10s %-34s %-34s %s\n' "$figure" "${RESULT[$figure,kamailio]:-}" "${RESULT[$figure,sippool]:-}" "$r"
done
echo "(callgrind: instructions per call; t500/t6000: CPU s per 1000 calls / p99 ms; maxrate: highest passing cps / highest with p99 <= 100 ms; ratio: of the means of the first figures, the issue's goal is at most 0.5)"
exit $status

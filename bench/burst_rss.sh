#!/usr/bin/env bash
# Memory of a burst (issue 17): sippool (release) on the bench topology (bench/bench.toml:
# proxy 127.0.0.10:5060, primary 127.0.0.11:5060, backup 127.0.0.12:5060, HTTP :8080), a
# burst of N out-of-dialog requests for a user at the proxy sent as fast as one sender
# manages (bench/burst.py), RSS sampled every 0.2 s through it and for AFTER_S (60) s after.
# Not a timed test: a measurement, printed as one line of key=value pairs at the end.
#
#   bench/burst_rss.sh options [N]       OPTIONS, forwarded, 200 relayed: transactions
#                                        answered at once, then lingering (Timer J, 32 s).
#                                        Servers: SIPp with ../shared/bench/scenarios/uas.xml
#                                        when it is there, else bench/burst.py uas.
#   bench/burst_rss.sh invite [N]        INVITEs to servers that ring at once and answer 486
#                                        (FINAL=200: 200) HOLD_S (20) s later: in flight.
#   bench/burst_rss.sh soak [RATE] [SECS] calls (INVITE/180/200/ACK/BYE, SIPp uac.xml and
#                                        uas.xml of ../shared/bench) at RATE (500) cps for SECS
#                                        (600) s, RSS every 10 s; drift after the first minute.
#
# Default N 10000. SIPPOOL_BIN=PATH measures that binary; SIPPOOL_EXTRA_ENV="K=V ..." is put
# in sippool's environment (e.g. MALLOC_ARENA_MAX=2). Keys printed: idle_kib (RSS before),
# peak_kib, live_at_peak (transactions in flight + lingering, from /metrics), per_txn_bytes
# ((peak - idle) / live), after_kib (RSS AFTER_S after the burst) and after_minus_idle_kib.
# BENCH_NET=127.0.9 moves the whole topology to 127.0.9.x (two measurements side by side).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
MODE="${1:-options}"
SHARED="${BENCH_SHARED:-$ROOT/../shared/bench}"
AFTER_S="${AFTER_S:-60}"
HOLD_S="${HOLD_S:-20}"
NET="${BENCH_NET:-127.0.0}"
PROXY=$NET.10
HTTP="http://$NET.10:8080"
case "$MODE" in
  options | invite) N="${2:-10000}" ;;
  soak) RATE="${2:-500}"; SECS="${3:-600}" ;;
  *) echo "usage: $0 options|invite [N] | soak [RATE] [SECS]" >&2; exit 2 ;;
esac
e2e_init burst
ulimit -n 65536 2>/dev/null || true
for ip in $NET.10 $NET.11 $NET.12; do
  if awk -v h="$(printf '%02X%02X%02X%02X:13C4' $(echo $ip | awk -F. '{print $4,$3,$2,$1}'))" \
    '$2==h{f=1} END{exit !f}' /proc/net/udp; then
    echo "$ip:5060 is in use (another bench running?)" >&2
    exit 2
  fi
done

start_servers() { # kind: sipp | slow
  for ip in $NET.11 $NET.12; do
    if [ "$1" = sipp ]; then
      (cd "$WORK" && exec sipp -sf "$SHARED/scenarios/uas.xml" -i $ip -p 5060 -t u1 -nostdin \
        -buff_size 4194304 > "$WORK/uas-$ip.log" 2>&1) &
    else
      python3 "$ROOT/bench/burst.py" uas $ip 5060 "$HOLD_S" "${FINAL:-486}" > "$WORK/uas-$ip.log" 2>&1 &
    fi
    pids+=($!)
    wait_udp $ip 5060
  done
}

# metric NAME: its value on /metrics (0 when absent).
metric_now() { curl -s "$HTTP/metrics" | awk -v n="$1" '$1==n{v=$2} END{print v+0}'; }

if [ "$MODE" = invite ] || [ ! -f "$SHARED/scenarios/uas.xml" ]; then
  [ "$MODE" = soak ] && { echo "soak needs $SHARED/scenarios (SIPp uac.xml, uas.xml)" >&2; exit 2; }
  start_servers slow
else
  start_servers sipp
fi
# Every transaction of the burst admitted: the per-transaction figure is the point.
sed "s/127\.0\.0\./$NET./g" "$ROOT/bench/bench.toml" > "$WORK/bench.toml"
env SIPPOOL__LIMITS__MAX_TRANSACTIONS=1000000 ${SIPPOOL_EXTRA_ENV:-} "$BIN" run --config "$WORK/bench.toml" > "$WORK/sippool.log" 2>&1 &
proxy=$!
pids+=($proxy)
wait_log "$WORK/sippool.log" proxy_initialised
python3 "$ROOT/bench/burst.py" sample $proxy 0.2 > "$WORK/rss.txt" &
pids+=($!)
# Counts of live transactions, once a second (the HTTP endpoint answers between bursts of
# work; a missed second only blurs live_at_peak).
(while kill -0 $proxy 2>/dev/null; do
  printf '%s %s %s\n' "$(date +%s.%N)" "$(metric_now sippool_transactions_in_flight)" \
    "$(metric_now sippool_transactions_lingering)"
  sleep 1
done) > "$WORK/live.txt" 2>/dev/null &
pids+=($!)
sleep 5 # probes mark the pair up; RSS settles
rss_now() { awk '/^VmRSS:/{print $2}' "/proc/$proxy/status"; }
idle=$(rss_now)
start=$(date +%s.%N)

if [ "$MODE" = soak ]; then
  echo "burst_rss.sh: soak at $RATE cps for $SECS s (RSS every 10 s)" >&2
  (cd "$WORK" && sipp $PROXY:5060 -sf "$SHARED/scenarios/uac.xml" -i $NET.1 -p 5070 -t u1 \
    -nostdin -r "$RATE" -rp 1000 -m $((RATE * SECS)) -l 15000 -recv_timeout 8000 \
    -timeout "$((SECS + 30))s" -buff_size 4194304 -trace_stat -stf stats.csv -fd 10 \
    > uac.out 2>&1) &
  uacpid=$!
  t=0
  : > "$WORK/soak.txt"
  while kill -0 $uacpid 2>/dev/null; do
    sleep 10
    t=$((t + 10))
    r=$(rss_now)
    echo "$t $r" >> "$WORK/soak.txt"
    echo "t=${t}s rss_kib=$r" >&2
  done
  wait $uacpid || true
  ok=$(sipp_stat "$WORK/stats.csv" 'SuccessfulCall(C)')
  failed=$(sipp_stat "$WORK/stats.csv" 'FailedCall(C)')
  awk -v idle="$idle" -v ok="$ok" -v failed="$failed" -v rate="$RATE" -v secs="$SECS" '
    { t[NR]=$1; r[NR]=$2 }
    END {
      for (i = 1; i <= NR; i++) if (t[i] >= 60) { if (!b) b = r[i]; if (r[i] > mx) mx = r[i] }
      printf "mode=soak rate=%s secs=%s ok=%s failed=%s idle_kib=%d rss_at_60s_kib=%d max_after_60s_kib=%d last_kib=%d drift_pct=%.1f\n",
        rate, secs, ok, failed, idle, b, mx, r[NR], b ? 100 * (mx - b) / b : 0 }' "$WORK/soak.txt"
  exit 0
fi

method=OPTIONS
quiet=15
window=${WINDOW:-1000}
if [ "$MODE" = invite ]; then method=INVITE; quiet=$((HOLD_S + 15)); window=${WINDOW:-200}; fi
python3 "$ROOT/bench/burst.py" uac $PROXY:5060 $NET.1 "$N" $method --quiet $quiet --window "$window" \
  > "$WORK/uac.txt" &
uacpid=$!
pids+=($uacpid)
wait_grep "$WORK/uac.txt" '^BURST_END' 600
read -r _ end answered < <(grep '^BURST_END' "$WORK/uac.txt")
echo "burst_rss.sh: burst of $N $method ended after $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s ($answered answered); waiting ${AFTER_S} s" >&2
sleep "$(awk -v e="$end" -v a="$AFTER_S" -v now="$(date +%s.%N)" 'BEGIN{d=e+a-now; print (d>0?d:0)}')"
after=$(rss_now)
wait $uacpid || true
done_line=$(grep '^DONE' "$WORK/uac.txt" || echo DONE)
awk -v idle="$idle" -v after="$after" -v start="$start" -v mode="$MODE" -v n="$N" \
  -v answered="$answered" -v done_line="$done_line" -v work="$WORK" '
  FNR == 1 { file++ }
  file == 1 { if ($1 >= start && $2 > peak) { peak = $2; peak_t = $1 } }
  file == 2 { lt[++nl] = $1; live[nl] = $2 + $3 }
  END {
    best = 0
    for (i = 1; i <= nl; i++) if (live[i] > best) best = live[i]
    sub(/^DONE /, "", done_line)
    printf "mode=%s n=%d answered=%d %s idle_kib=%d peak_kib=%d live_at_peak=%d per_txn_bytes=%d per_answered_bytes=%d after_kib=%d after_minus_idle_kib=%d run_dir=%s\n",
      mode, n, answered, done_line, idle, peak, best, best ? (peak - idle) * 1024 / best : 0,
      answered ? (peak - idle) * 1024 / answered : 0, after, after - idle, work }' \
  "$WORK/rss.txt" "$WORK/live.txt"

#!/usr/bin/env bash
# Instructions per call, counted by callgrind rather than timed: the proxy runs under
# `valgrind --tool=callgrind` in the topology of ../shared/bench (run.sh throughput, PROXY=custom),
# then once more for the same length with the UAS pair up and no calls (probes only), and
#
#   instructions_per_call = (Ir of the loaded run - Ir of the idle run) / successful calls
#
# Ir is user-space instructions of all the proxy's threads (the `totals:` line of the
# callgrind out file). Startup, probes, timers and shutdown cost the same in both runs and
# cancel out. Runs of one binary agree to within 1 % (mostly 0.1-0.5 %), busy machine or not.
# The proxy gets SIPPOOL__RUNTIME__DRAIN_TIMEOUT_S=3 so that it exits before run.sh's SIGKILL.
#
# Kamailio (PROXY=kamailio) runs as run.sh would start it (-f kamailio.cfg -DD -E -m 1024 -M 16
# -x tlsf -X tlsf -Y/-w the run's proxy directory, -A PROXY_IP, PROXY_PORT, INVITE_RATE, DS_LIST,
# CTL_SOCK in the run's proxy directory, DS_PING_S, FR_TIMER_MS from the harness's environment),
# but through run.sh's custom mode so that valgrind can wrap it: `valgrind --tool=callgrind
# --trace-children=yes`, one out file and one log per process (%p). Its Ir is the sum over all
# its processes (12 with this config, as the harness README says); every process must
# leave a log with "Collected" and an out file, and their number must be KAM_PROCS (default 12),
# else no figure. Forked children inherit the main process's start-up count (callgrind does not
# zero costs at fork), about 11M Ir each: the same in both runs, so it cancels out as well.
# Valgrind slows Kamailio down but not to its fr_timer (FR_TIMER_MS=1000, as in run.sh): in the
# sitting of 2026-11-30 (2 busy cores) its slowest INVITE->200 took 426 ms, with no retransmission
# and every INVITE answered by the primary (no timeout, no failover), so both proxies keep the
# harness's 1 s timers. Should calls fail under callgrind, the script gives no figure (below).
# That sitting, 1000 calls at 50/s on BENCH_NET=127.0.8, each proxy twice: Kamailio 5.6.3
# 271,123 and 271,178 Ir per call (about 266k in its 4 UDP workers, 4.5k in a timer process);
# sippool e19be7c 223,246 and 222,642, i.e. 0.82 of Kamailio's.
#
#   bench/callgrind.sh [BINARY]       default target/release/sippool (build it first)
#   PROXY=kamailio bench/callgrind.sh [KAMAILIO]
#                                     the reference proxy instead, in the same scenario (default
#                                     binary: kamailio on PATH, config: the harness's kamailio.cfg)
#   CALLS=1000 RATE=50                the load (defaults); CALLS/RATE <= 120
#   CONFIG=bench/bench.toml           the proxy config (default: this repository's bench.toml)
#   CALLGRIND_OUT=DIR                 where the out files go (default /tmp/sippool-callgrind/...)
#   BENCH_HARNESS=../shared/bench/run.sh
#   BENCH_NET=127.0.9                 the topology on 127.0.9.x instead of 127.0.0.x (the
#                                     config's 127.0.0. addresses moved with it)
#
# Last line on stdout: instructions_per_call=N ok=N failed=N ... out_dir=DIR. Exit 1 (and no
# figure) if any call failed or was rejected, if the proxy did not leave a callgrind file, or
# if a run went wrong; exit 2 on a usage or set-up error. Takes about 1.5 minutes.
# Open the out files with `callgrind_annotate --inclusive=yes FILE | head -40`.
set -euo pipefail
export LC_ALL=C

# ---- the proxy wrapper (runs as $PROXY_CMD under run.sh's `timeout`) ------------------------
# Records when the proxy started and when SIGTERM came (timeout signals its whole process group,
# so valgrind gets the signal itself), and stays in the foreground until valgrind has exited.
if [ "${1:-}" = __proxy ]; then
  set +e   # the signal may reach us twice (timeout signals its child, then its group)
  kind=$2 prefix=$3 bin=$4 config=$5
  # The clock is the kernel's uptime, which no clock adjustment steps.
  read -r up _ </proc/uptime
  printf '%s\n' "$up" >"$prefix.start"
  # no fork in the trap: a forked `date` could be killed by the group's SIGTERM
  trap '[ -s "$prefix.term" ] || { read -r up _ </proc/uptime; printf "%s\n" "$up" >"$prefix.term"; }' TERM INT
  if [ "$kind" = kamailio ]; then
    # run.sh's own command line for Kamailio (start_proxy, PROXY=kamailio), with the addresses
    # and timers of the custom-proxy environment; one out file and one log per process (%p)
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$prefix.%p.callgrind.out" \
      --log-file="$prefix.%p.valgrind.log" "$bin" -f "$config" -DD -E \
      -m "${KAM_SHM_MB:-1024}" -M "${KAM_PKG_MB:-16}" -x "${KAM_ALLOC:-tlsf}" -X "${KAM_ALLOC:-tlsf}" \
      -Y "$PWD" -w "$PWD" -A "PROXY_IP=${PROXY_LISTEN%:*}" -A "PROXY_PORT=${PROXY_LISTEN##*:}" \
      -A "INVITE_RATE=${INVITE_RATE:-1000000}" -A "DS_LIST=\"$DS_LIST\"" \
      -A "CTL_SOCK=\"unix:$PWD/ctl.sock\"" -A "DS_PING_S=${DS_PING_S:-1}" \
      -A "FR_TIMER_MS=${FR_TIMER_MS:-1000}" &
  else
    SIPPOOL__OVERLOAD__INVITE_RATE="${INVITE_RATE:-1000000}" SIPPOOL__RUNTIME__DRAIN_TIMEOUT_S=3 \
      valgrind --tool=callgrind --callgrind-out-file="$prefix.callgrind.out" \
      --log-file="$prefix.valgrind.log" "$bin" run --config "$config" &
  fi
  child=$!
  while :; do
    wait "$child"; rc=$?
    # a trapped signal interrupts `wait`; wait again until valgrind has really exited
    if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then continue; fi
    break
  done
  exit "$rc"
fi

die() { echo "callgrind.sh: $*" >&2; exit 2; }
fail() { echo "callgrind.sh: FAILED: $*" >&2; exit 1; }
log() { echo "callgrind.sh: $*" >&2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SELF="$ROOT/bench/$(basename "$0")"
HARNESS="${BENCH_HARNESS:-$ROOT/../shared/bench/run.sh}"
BENCH_DIR="$(cd "$(dirname "$HARNESS")" 2>/dev/null && pwd)" || die "harness $HARNESS not found"
PROXY="${PROXY:-sippool}"
case "$PROXY" in
  sippool) BIN="${1:-$ROOT/target/release/sippool}"; CONFIG="${CONFIG:-$ROOT/bench/bench.toml}" ;;
  kamailio) BIN="${1:-$(command -v kamailio || echo /usr/sbin/kamailio)}"
            CONFIG="${CONFIG:-$BENCH_DIR/kamailio.cfg}" ;;
  *) die "PROXY must be sippool or kamailio" ;;
esac
CALLS="${CALLS:-1000}"
RATE="${RATE:-50}"
OUT="${CALLGRIND_OUT:-/tmp/sippool-callgrind/$(date +%Y%m%d-%H%M%S)-$$}"
NET="${BENCH_NET:-127.0.0}"
PROXY_IP=$NET.10 PROXY_PORT=5060 PRIMARY_IP=$NET.11 BACKUP_IP=$NET.12 UAS_PORT=5060
export BENCH_PROXY_IP=$PROXY_IP BENCH_PRIMARY_IP=$PRIMARY_IP BENCH_BACKUP_IP=$BACKUP_IP BENCH_UAC_IP=$NET.1
MAX_LIFE_S=178
KAM_PROCS="${KAM_PROCS:-12}"

[ -x "$HARNESS" ] || die "harness $HARNESS not found (see ../shared/bench/README.md)"
[ -x "$BIN" ] || die "binary $BIN not found: cargo build --release"
[ -f "$CONFIG" ] || die "config $CONFIG not found"
for t in valgrind sipp timeout python3; do command -v $t >/dev/null || die "$t not installed"; done
[[ $CALLS =~ ^[0-9]+$ && $RATE =~ ^[0-9]+$ && $CALLS -gt 0 && $RATE -gt 0 ]] || die "CALLS and RATE must be positive integers"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# A reused directory keeps an earlier run's files: its .term would be taken for this run's
# (a SIGTERM writes it only once), and its out files summed with this run's.
rm -f "$OUT"/*.start "$OUT"/*.term "$OUT"/*.callgrind.out "$OUT"/*.valgrind.log
if [ "$NET" != 127.0.0 ] && [ "$PROXY" = sippool ]; then
  sed "s/127\.0\.0\./$NET./g" "$CONFIG" > "$OUT/bench.toml"
  CONFIG="$OUT/bench.toml"
fi

hexaddr() { local IFS=.; set -- $1 "$2"; printf '%02X%02X%02X%02X:%04X' "$4" "$3" "$2" "$1" "$5"; }
listening() { awk -v h="$(hexaddr "$1" "$2")" '$2==h {f=1} END{exit !f}' /proc/net/udp; }
for ip in $PROXY_IP $PRIMARY_IP $BACKUP_IP; do
  listening "$ip" 5060 && die "$ip:5060 is in use (another bench running?)"
done

proxy_cmd() { printf 'exec %q __proxy %q %q %q %q' "$SELF" "$PROXY" "$1" "$BIN" "$CONFIG"; }
kv() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k{print $2}'; }
ir_of() {   # out-file prefix -> "IR PROCS": Ir summed over the proxy's processes (the totals:
  # line of each out file, or summary: in older formats) and how many there were. Every process
  # valgrind started (one log each) must have written "Collected" and its out file: a process
  # killed before its dump would silently lower the sum.
  local i f out n=0 sum=0 v logs=() prefix=$1
  if [ "$PROXY" = kamailio ]; then
    for f in "$prefix".*.valgrind.log; do [ -e "$f" ] && logs+=("$f"); done
  else
    logs=("$prefix.valgrind.log")
  fi
  [ "${#logs[@]}" -gt 0 ] || fail "no valgrind log $prefix*.valgrind.log"
  for f in "${logs[@]}"; do
    for i in $(seq 100); do grep -q 'Collected' "$f" 2>/dev/null && break; sleep 0.1; done
    grep -q 'Collected' "$f" 2>/dev/null || fail "valgrind did not finish (see $f)"
    out=${f%.valgrind.log}.callgrind.out
    [ -s "$out" ] || fail "no callgrind output $out (the proxy was killed before it could write it?)"
    v=$(awk '/^totals:/{t=$2} /^summary:/{s=$2} END{v=(t!=""?t:s); if(v=="") exit 1; print v}' "$out") \
      || fail "no totals in $out"
    sum=$(awk -v a="$sum" -v b="$v" 'BEGIN{printf "%.0f", a+b}'); n=$((n + 1))
  done
  if [ "$PROXY" = kamailio ]; then
    local outs=("$prefix".*.callgrind.out)
    [ "${#outs[@]}" = "$n" ] || fail "${#outs[@]} out files but $n valgrind logs for $prefix"
    [ "$n" = "$KAM_PROCS" ] || fail "$n Kamailio processes under $prefix, expected $KAM_PROCS (KAM_PROCS)"
  fi
  echo "$sum $n"
}

# ---- 1. loaded run: the harness's throughput mode, proxy under callgrind ---------------------
log "binary $BIN ($(sha256sum "$BIN" | cut -c1-12)), config $CONFIG, output $OUT"
log "loaded run: $CALLS calls at $RATE/s through $HARNESS"
rc=0
line=$(BENCH_OUT="$OUT/harness" PROXY_CMD="$(proxy_cmd "$OUT/loaded")" \
  timeout -k 10 190 "$HARNESS" throughput custom "$RATE" "$CALLS" | tail -1) || rc=$?
log "harness: $line"
[ "$rc" = 0 ] || fail "run.sh exited with $rc (see $OUT/harness)"
calls=$(kv "$line" calls); ok=$(kv "$line" ok); failed=$(kv "$line" failed)
rej=$(kv "$line" rejected_503); retrans=$(kv "$line" retrans); uac_rc=$(kv "$line" uac_rc)
[[ $ok =~ ^[0-9]+$ && $failed =~ ^[0-9]+$ ]] || fail "no ok/failed counts from the harness"
counts="ok=$ok failed=$failed rejected_503=$rej calls=$calls retrans=$retrans"
if [ "$failed" != 0 ] || [ "$rej" != 0 ] || [ "$ok" != "$CALLS" ] || [ "$uac_rc" != 0 ]; then
  fail "calls did not all succeed: $counts uac_rc=$uac_rc (see $(kv "$line" run_dir))"
fi
[ -f "$OUT/loaded.term" ] || fail "the proxy never got SIGTERM from the harness"
r=$(ir_of "$OUT/loaded"); ir_loaded=${r% *} procs_loaded=${r#* }
len=$(awk -v a="$(cat "$OUT/loaded.start")" -v b="$(cat "$OUT/loaded.term")" 'BEGIN{printf "%.3f", b-a}')
log "loaded run: Ir=$ir_loaded ($procs_loaded processes), proxy ran ${len}s before SIGTERM, $counts"

# ---- 2. idle run of the same length: UAS pair up, proxy under callgrind, no calls -------------
log "idle run: ${len}s, probes only"
IDLE="$OUT/idle"
PIDS=()
cleanup() {   # stop what this script started, by pid: TERM, then KILL after 10 s
  local p i
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 100); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for name in primary backup; do
  ip=$PRIMARY_IP; [ $name = backup ] && ip=$BACKUP_IP
  mkdir -p "$IDLE/$name"
  (cd "$IDLE/$name" && exec timeout -k 5 $MAX_LIFE_S sipp -sf "$BENCH_DIR/scenarios/uas.xml" -i "$ip" \
     -p $UAS_PORT -t u1 -nostdin -timeout "${MAX_LIFE_S}s" -buff_size 4194304 \
     -trace_counts -fd 1 -trace_err >uas.out 2>&1) &
  PIDS+=("$!")
  for i in $(seq 100); do listening "$ip" $UAS_PORT && break; sleep 0.1; done
  listening "$ip" $UAS_PORT || fail "idle run: UAS $name did not start (see $IDLE/$name/uas.out)"
done
mkdir -p "$IDLE/proxy"
# the dispatcher list as run.sh writes it (mkrun)
printf '# setid destination flags priority\n%s sip:%s:%s 0 10\n%s sip:%s:%s 0 5\n' \
  1 "$PRIMARY_IP" $UAS_PORT 1 "$BACKUP_IP" $UAS_PORT >"$IDLE/dispatcher.list"
(cd "$IDLE/proxy" && export PROXY_LISTEN="$PROXY_IP:$PROXY_PORT" PROXY_PRIMARY="$PRIMARY_IP:$UAS_PORT" \
   PROXY_BACKUP="$BACKUP_IP:$UAS_PORT" INVITE_RATE=1000000 DS_LIST="$IDLE/dispatcher.list" DS_PING_S=1 \
   FR_TIMER_MS=1000 \
   && exec timeout -k 5 $MAX_LIFE_S bash -c "$(proxy_cmd "$OUT/idle")" >proxy.log 2>&1) &
proxy_pid=$!
PIDS=("$proxy_pid" "${PIDS[@]}")
for i in $(seq 200); do listening $PROXY_IP $PROXY_PORT && break; kill -0 $proxy_pid 2>/dev/null || break; sleep 0.1; done
listening $PROXY_IP $PROXY_PORT || fail "idle run: the proxy did not listen (see $IDLE/proxy/proxy.log)"
stop_at=$(awk -v a="$(cat "$OUT/idle.start")" -v l="$len" 'BEGIN{printf "%.3f", a+l}')
sleep "$(awk -v t="$stop_at" -v n="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{d=t-n; print (d>0)?d:0}')"
kill -0 $proxy_pid 2>/dev/null || fail "idle run: the proxy exited early (see $IDLE/proxy/proxy.log)"
kill -TERM $proxy_pid
for i in $(seq 300); do kill -0 $proxy_pid 2>/dev/null || break; sleep 0.1; done
cleanup
r=$(ir_of "$OUT/idle"); ir_idle=${r% *} procs_idle=${r#* }
idle_len=$(awk -v a="$(cat "$OUT/idle.start")" -v b="$(cat "$OUT/idle.term")" 'BEGIN{printf "%.3f", b-a}')
log "idle run: Ir=$ir_idle ($procs_idle processes), proxy ran ${idle_len}s before SIGTERM"
# The idle run cancels the loaded run's fixed costs only if it lasted as long.
awk -v a="$len" -v b="$idle_len" 'BEGIN{exit !(a > 0 && b > 0 && (a-b)^2 < (0.05*a)^2)}' ||
  fail "the idle run (${idle_len}s) did not last as long as the loaded run (${len}s)"

# ---- 3. the figure ------------------------------------------------------------------------
per_call=$(awk -v l="$ir_loaded" -v i="$ir_idle" -v n="$ok" 'BEGIN{printf "%d", (l-i)/n}')
(( per_call > 0 )) || fail "the idle run cost more than the loaded run (Ir $ir_idle >= $ir_loaded)"
echo "instructions_per_call=$per_call proxy=$PROXY $counts procs=$procs_loaded ir_loaded=$ir_loaded ir_idle=$ir_idle loaded_s=$len idle_s=$idle_len binary=$BIN out_dir=$OUT"

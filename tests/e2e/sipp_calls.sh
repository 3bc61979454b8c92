#!/usr/bin/env bash
# End-to-end: SIPp's built-in UAC places calls through sippool to SIPp's built-in UAS,
# over UDP and then over TCP on the caller leg. Every call must succeed.
#
#   tests/e2e/sipp_calls.sh [CALLS] [RATE]      default 2000 calls at 200 calls/s
#
# Loopback only: sippool on 127.0.0.20, the UAS on 127.0.0.21, the UAC on 127.0.0.22.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
CALLS="${1:-2000}"
RATE="${2:-200}"

e2e_init e2e

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "e2e"
advertised_host = "127.0.0.20"
[[listen]]
transport = "udp"
address = "127.0.0.20:5060"
[[listen]]
transport = "tcp"
address = "127.0.0.20:5060"
[[pair]]
name = "e2e"
primary = "127.0.0.21:5060;transport=udp"
backup = "127.0.0.21:5062;transport=udp"
# SIPp's built-in UAS does not answer OPTIONS: probing off, the servers are taken as up
# (failover is exercised by sipp_failover.sh).
[health]
oos_check = 0
TOML

"$BIN" check-config "$WORK/sippool.toml"
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
sipp -sn uas -i 127.0.0.21 -p 5060 -nostdin -timeout 120s > "$WORK/uas.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised
wait_udp 127.0.0.21 5060

fail=0
for t in u1 t1; do
  name=$([ $t = u1 ] && echo udp || echo tcp)
  port=$([ $t = u1 ] && echo 5070 || echo 5072)
  if timeout 120 sipp -sn uac 127.0.0.20:5060 -t "$t" -i 127.0.0.22 -p "$port" \
      -r "$RATE" -m "$CALLS" -nostdin -timeout 100s -recv_timeout 10000 \
      -trace_stat -stf "$WORK/uac-$name.csv" > "$WORK/uac-$name.log" 2>&1; then
    rc=0
  else
    rc=$?
  fi
  ok=$(sipp_stat "$WORK/uac-$name.csv" "SuccessfulCall(C)")
  failed=$(sipp_stat "$WORK/uac-$name.csv" "FailedCall(C)")
  echo "sipp $name: calls=$CALLS successful=$ok failed=$failed rc=$rc"
  if [ "$rc" != 0 ] || [ "$ok" != "$CALLS" ] || [ "$failed" != 0 ]; then
    fail=1
    tail -30 "$WORK/uac-$name.log"
  fi
done
if [ $fail = 0 ]; then
  echo "e2e: 2 passed, 0 failed"
else
  echo "e2e: failed, logs in $WORK"
  exit 1
fi

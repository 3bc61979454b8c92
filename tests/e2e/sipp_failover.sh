#!/usr/bin/env bash
# Failover end to end: SIPp places calls at a steady rate through sippool to an HA pair of
# SIPp servers; the primary is killed (SIGKILL) mid-run. Every call must succeed, and calls
# must land on the backup after the kill.
#
#   tests/e2e/sipp_failover.sh [RATE] [SECONDS] [KILL_AT]     default 50 calls/s, 20 s, 10 s
#
# Loopback only: sippool 127.0.0.40, primary 127.0.0.41, backup 127.0.0.42, UAC 127.0.0.43.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
RATE="${1:-50}"
SECS="${2:-20}"
KILL_AT="${3:-10}"
CALLS=$((RATE * SECS))
UAS="$ROOT/tests/e2e/uas_ha.xml"

e2e_init failover

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "failover"
advertised_host = "127.0.0.40"
[[listen]]
transport = "udp"
address = "127.0.0.40:5060"
[[pair]]
name = "ha"
primary = "127.0.0.41:5060"
backup = "127.0.0.42:5060"
[health]
oos_check = 1
oos_force = 1
probe_timeout_ms = 500
failover_timeout_ms = 500
TOML

(cd "$WORK" && exec sipp -sf "$UAS" -i 127.0.0.41 -p 5060 -nostdin -timeout 120s -trace_stat -fd 1 -stf primary.csv > primary.log 2>&1) &
primary=$!
pids+=($primary)
(cd "$WORK" && exec sipp -sf "$UAS" -i 127.0.0.42 -p 5060 -nostdin -timeout 120s -trace_stat -fd 1 -stf backup.csv > backup.log 2>&1) &
pids+=($!)
# The servers listen before sippool sends its first probe.
wait_udp 127.0.0.41 5060
wait_udp 127.0.0.42 5060
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised

(cd "$WORK" && exec timeout 120 sipp -sn uac 127.0.0.40:5060 -i 127.0.0.43 -p 5070 -r "$RATE" -m "$CALLS" \
  -nostdin -timeout 100s -recv_timeout 10000 -trace_stat -trace_err -stf uac.csv > uac.log 2>&1) &
uac=$!
sleep "$KILL_AT"
kill -KILL "$primary"
echo "primary killed at ${KILL_AT}s"
rc=0
wait "$uac" || rc=$?

ok=$(sipp_stat "$WORK/uac.csv" "SuccessfulCall(C)")
failed=$(sipp_stat "$WORK/uac.csv" "FailedCall(C)")
switched=$(grep -c '"pair_switched"\|event="pair_switched"\|pair_switched' "$WORK/sippool.log" || true)
backup_calls=$(sipp_stat "$WORK/backup.csv" "TotalCallCreated")
echo "failover: calls=$CALLS successful=$ok failed=$failed rc=$rc pair_switched_events=$switched backup_calls_created=$backup_calls"
grep -E "upstream_down|pair_switched|transaction_retried" "$WORK/sippool.log" | head -5
if [ "$rc" = 0 ] && [ "$ok" = "$CALLS" ] && [ "$failed" = 0 ] && [ "$switched" -ge 1 ] && [ "${backup_calls:-0}" -gt 0 ]; then
  echo "failover e2e: 1 passed, 0 failed"
else
  echo "failover e2e: failed, logs in $WORK"
  tail -20 "$WORK/uac.log"
  exit 1
fi

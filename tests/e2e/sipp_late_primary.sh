#!/usr/bin/env bash
# No ghost calls, end to end: SIPp places calls through sippool to a pair whose primary is
# alive but slow (tests/e2e/uas_late.xml: 200 only after 1.5 s, after the 1 s failover timer
# has sent the call to the backup, SIPp's built-in UAS). Every call must complete through
# the backup, and the primary must end with no unfinished dialog: each of its late 200s
# ACKed and its dialog ended by sippool with a BYE (SIPp counts a call whose 200 is never
# ACKed as failed).
#
#   tests/e2e/sipp_late_primary.sh [CALLS] [RATE]      default 40 calls at 10/s
#
# Loopback only: sippool 127.0.0.70, primary 127.0.0.71, backup 127.0.0.72, UAC 127.0.0.73.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
CALLS="${1:-40}"
RATE="${2:-10}"

e2e_init late

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "late-primary"
advertised_host = "127.0.0.70"
[[listen]]
transport = "udp"
address = "127.0.0.70:5060"
[[pair]]
name = "ha"
primary = "127.0.0.71:5060"
backup = "127.0.0.72:5060"
[health]
oos_check = 0
failover_timeout_ms = 1000
[http]
address = "127.0.0.70:8080"
TOML

(cd "$WORK" && exec timeout 120 sipp -sf "$ROOT/tests/e2e/uas_late.xml" -i 127.0.0.71 -p 5060 -nostdin \
  -timeout 90s -trace_stat -fd 1 -stf primary.csv -trace_err > primary.log 2>&1) &
primary=$!
pids+=($primary)
(cd "$WORK" && exec timeout 120 sipp -sn uas -i 127.0.0.72 -p 5060 -nostdin -timeout 90s > backup.log 2>&1) &
pids+=($!)
wait_udp 127.0.0.71 5060
wait_udp 127.0.0.72 5060
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised

rc=0
(cd "$WORK" && timeout 120 sipp -sf "$ROOT/tests/e2e/uac_rr.xml" 127.0.0.70:5060 -i 127.0.0.73 -p 5070 -r "$RATE" -m "$CALLS" \
  -nostdin -timeout 100s -recv_timeout 10000 -trace_stat -trace_err -stf uac.csv > uac.log 2>&1) || rc=$?
# The last late 200s, their ACKs and BYEs: until the primary has seen every dialog end
# (at most 10 s more).
for _ in $(seq 100); do
  created=$(sipp_stat "$WORK/primary.csv" "TotalCallCreated" 2>/dev/null || echo 0)
  done_ok=$(sipp_stat "$WORK/primary.csv" "SuccessfulCall(C)" 2>/dev/null || echo 0)
  [ -n "$created" ] && [ "${created:-0}" -gt 0 ] && [ "$created" = "$done_ok" ] && break
  sleep 0.1
done
sleep 1.2   # one more statistics line (-fd 1)
ok=$(sipp_stat "$WORK/uac.csv" "SuccessfulCall(C)")
failed=$(sipp_stat "$WORK/uac.csv" "FailedCall(C)")
p_created=$(sipp_stat "$WORK/primary.csv" "TotalCallCreated")
p_ok=$(sipp_stat "$WORK/primary.csv" "SuccessfulCall(C)")
p_failed=$(sipp_stat "$WORK/primary.csv" "FailedCall(C)")
ended=$(metric "http://127.0.0.70:8080/metrics" 'sippool_ghost_branches_total{outcome="ended"}')
# The primary's "calls" are its dialogs and the OPTIONS probes it answered: every one must
# have ended well.
echo "late primary: calls=$CALLS ok=$ok failed=$failed rc=$rc; primary: calls=$p_created ended well=$p_ok failed=$p_failed; sippool ghost_branches ended=$ended"
if [ "$rc" = 0 ] && [ "$ok" = "$CALLS" ] && [ "$failed" = 0 ] && [ "${p_created:-0}" -gt 0 ] \
   && [ "$p_ok" = "$p_created" ] && [ "$p_failed" = 0 ] && [ "${ended%.*}" -ge 1 ]; then
  echo "late primary e2e: 1 passed, 0 failed"
else
  echo "late primary e2e: failed, logs in $WORK"
  tail -n 20 "$WORK/uac.log" "$WORK/primary.log"
  grep -E "ghost|retried|error" "$WORK/sippool.log" | tail -10
  exit 1
fi

#!/usr/bin/env bash
# Calls outlive the instance that set them up, with SIPp: two sippool instances of one pool
# (`pool.name`), calls with a hold time set up through instance A, A killed (SIGKILL) while
# every call is up; each caller's BYE then goes to instance B (SIPp `setdest`, as SIPp does
# not resolve the pool's name in the Route). Every call must end cleanly on both sides, and
# B must have carried every BYE.
#
#   tests/e2e/sipp_pool_dialogs.sh [CALLS] [RATE] [HOLD_MS]     default 100 calls, 25/s, 5000 ms
#
# Loopback only: A 127.0.0.80, B 127.0.0.81, server (SIPp UAS) 127.0.0.82, UAC 127.0.0.83.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
CALLS="${1:-100}"
RATE="${2:-25}"
HOLD="${3:-5000}"
# A dies once the last call is up and before the first hangs up.
SETUP_MS=$((CALLS * 1000 / RATE))
KILL_MS=$((SETUP_MS + 500))
[ "$KILL_MS" -lt "$HOLD" ] || { echo "hold time must exceed set-up time + 0.5 s" >&2; exit 2; }

e2e_init pool-dialogs

for inst in a:127.0.0.80 b:127.0.0.81; do
  name=${inst%%:*} ip=${inst#*:}
  cat > "$WORK/$name.toml" <<TOML
[instance]
name = "$name"
advertised_host = "$ip"
[[listen]]
transport = "udp"
address = "$ip:5060"
[[pair]]
name = "site"
primary = "127.0.0.82:5060"
backup = "127.0.0.82:5060"
[health]
oos_check = 0
[flow]
token_key = "5f3c9a7e1b2d4c6f8a0e1d3c5b7a9f2e"
[pool]
name = "pool.sippool.test"
[http]
address = "$ip:8080"
TOML
done

# The caller: INVITE and ACK to A, the hold, then BYE along the route set to B.
sed -e "s|<pause milliseconds=\"100\"/>|<pause milliseconds=\"$HOLD\"/>\n  <nop><action><setdest host=\"127.0.0.81\" port=\"5060\" protocol=\"udp\"/></action></nop>|" \
  "$ROOT/tests/e2e/uac_rr.xml" > "$WORK/uac_pool.xml"
grep -q setdest "$WORK/uac_pool.xml"
# The server: the HA pair's UAS (it keeps Record-Route in its answers, as a real server
# does), except that it answers the BYE toward B: SIPp answers to the address a call came
# from, not along the Via, and that address (A) is dead by then.
awk '{print} /^  <recv request="BYE"\/>$/{print "  <nop><action><setdest host=\"127.0.0.81\" port=\"5060\" protocol=\"udp\"/></action></nop>"}' \
  "$ROOT/tests/e2e/uas_ha.xml" > "$WORK/uas_pool.xml"
grep -q setdest "$WORK/uas_pool.xml"

(cd "$WORK" && exec sipp -sf uas_pool.xml -i 127.0.0.82 -p 5060 -nostdin -timeout 120s -trace_stat -trace_err -trace_counts -fd 1 -stf uas.csv > uas.log 2>&1) &
pids+=($!)
wait_udp 127.0.0.82 5060
"$BIN" run --config "$WORK/a.toml" > "$WORK/a.log" 2>&1 &
a=$!
pids+=($a)
"$BIN" run --config "$WORK/b.toml" > "$WORK/b.log" 2>&1 &
pids+=($!)
wait_log "$WORK/a.log" proxy_initialised
wait_log "$WORK/b.log" proxy_initialised

(cd "$WORK" && exec timeout 120 sipp -sf uac_pool.xml 127.0.0.80:5060 -i 127.0.0.83 -p 5070 -r "$RATE" -m "$CALLS" \
  -nostdin -timeout 100s -recv_timeout 10000 -trace_stat -trace_err -stf uac.csv > uac.log 2>&1) &
uac=$!
sleep "$(awk -v ms="$KILL_MS" 'BEGIN{printf "%.3f", ms/1000}')"
up=$(curl -s http://127.0.0.80:8080/metrics | awk '/^sippool_requests_received_total\{method="INVITE"/{print $2}')
kill -KILL "$a"
echo "instance A killed at ${KILL_MS} ms, after ${up:-0} INVITEs"
rc=0
wait "$uac" || rc=$?

ok=$(sipp_stat "$WORK/uac.csv" "SuccessfulCall(C)")
failed=$(sipp_stat "$WORK/uac.csv" "FailedCall(C)")
# The server's 200s to BYE (the last "200 sent" of its scenario), from its message counts,
# written every second.
for _ in $(seq 30); do
  uas_ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i ~ /_200_Sent$/) c=i} END{print $c}' "$WORK"/uas_pool_*_counts.csv)
  [ "$uas_ok" = "$CALLS" ] && break
  sleep 0.1
done
byes_b=$(curl -s http://127.0.0.81:8080/metrics | awk '/^sippool_requests_received_total\{method="BYE"/{print $2}')
echo "pool dialogs: calls=$CALLS invites_at_a_before_kill=${up:-0} caller_ok=$ok caller_failed=$failed server_byes_answered=$uas_ok byes_through_b=${byes_b:-0} rc=$rc"
if [ "$rc" = 0 ] && [ "${up:-0}" = "$CALLS" ] && [ "$ok" = "$CALLS" ] && [ "$failed" = 0 ] \
  && [ "$uas_ok" = "$CALLS" ] && [ "${byes_b:-0}" = "$CALLS" ]; then
  echo "pool dialogs e2e: 1 passed, 0 failed"
else
  echo "pool dialogs e2e: failed, logs in $WORK"
  tail -20 "$WORK/uac.log"
  exit 1
fi

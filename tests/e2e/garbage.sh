#!/usr/bin/env bash
# Bad input never disturbs other traffic: 10,000 garbage datagrams and 200 broken TCP
# streams are thrown at sippool while SIPp places 1000 calls through it; every call must
# succeed and sippool must still be running.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
e2e_init garbage
cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "garbage"
[[listen]]
transport = "udp"
address = "127.0.0.80:5060"
[[listen]]
transport = "tcp"
address = "127.0.0.80:5060"
[[pair]]
name = "p"
primary = "127.0.0.81:5060"
backup = "127.0.0.82:5060"
[health]
oos_check = 1
TOML
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/uas_ha.xml" -i 127.0.0.81 -p 5060 -nostdin -timeout 100s > uas.log 2>&1) &
pids+=($!)
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/uas_ha.xml" -i 127.0.0.82 -p 5060 -nostdin -timeout 100s > uas2.log 2>&1) &
pids+=($!)
wait_udp 127.0.0.81 5060
wait_udp 127.0.0.82 5060
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
proxy=$!
pids+=($proxy)
wait_log "$WORK/sippool.log" proxy_initialised
(cd "$WORK" && exec timeout 90 sipp -sn uac 127.0.0.80:5060 -i 127.0.0.83 -p 5070 -r 100 -m 1000 \
  -nostdin -timeout 80s -recv_timeout 10000 -trace_stat -stf uac.csv > uac.log 2>&1) &
uac=$!
garbage=$(python3 "$ROOT/tests/e2e/garbage.py" 127.0.0.80:5060 127.0.0.84 10000 200 9)
rc=0
wait "$uac" || rc=$?
ok=$(sipp_stat "$WORK/uac.csv" "SuccessfulCall(C)")
failed=$(sipp_stat "$WORK/uac.csv" "FailedCall(C)")
alive=no
kill -0 "$proxy" 2>/dev/null && alive=yes
echo "garbage: $garbage calls=1000 successful=$ok failed=$failed rc=$rc sippool_alive=$alive"
if [ "$rc" = 0 ] && [ "$ok" = 1000 ] && [ "$failed" = 0 ] && [ $alive = yes ]; then
  echo "garbage e2e: 1 passed, 0 failed"
else
  echo "garbage e2e: failed, logs in $WORK"; exit 1
fi

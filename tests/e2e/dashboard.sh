#!/usr/bin/env bash
# The dashboard in a real browser: SIPp places calls through sippool (a few over the INVITE
# rate, so some get 503) while the primary is killed; then headless Chromium opens
# sippool's `/`, its script fetches /status and /status/history, and the rendered page must
# show the backup as the active member, a calls chart with calls in it, a 503 chart with
# 503s, a probe RTT chart, and the switch marked on the charts. A screenshot is kept.
#   tests/e2e/dashboard.sh [SCREENSHOT]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
SHOT="${1:-/tmp/sippool-dashboard.png}"
CHROME=$(command -v chromium || command -v chromium-browser) || { echo "chromium not found" >&2; exit 2; }
e2e_init dash
cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "dashboard-demo"
advertised_host = "127.0.0.70"
[[listen]]
transport = "udp"
address = "127.0.0.70:5060"
[[pair]]
name = "site-a"
primary = "127.0.0.71:5060"
backup = "127.0.0.72:5060"
[health]
oos_check = 1
oos_force = 1
probe_timeout_ms = 300
failover_timeout_ms = 500
[overload]
invite_rate = 4
[http]
address = "127.0.0.70:8080"
TOML
UAS="$ROOT/tests/e2e/uas_ha.xml"
(cd "$WORK" && exec sipp -sf "$UAS" -i 127.0.0.71 -p 5060 -nostdin -timeout 60s > primary.log 2>&1) &
primary=$!
pids+=($primary)
(cd "$WORK" && exec sipp -sf "$UAS" -i 127.0.0.72 -p 5060 -nostdin -timeout 60s > backup.log 2>&1) &
pids+=($!)
wait_udp 127.0.0.71 5060
wait_udp 127.0.0.72 5060
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised
# 5 calls/s for 20 s against an INVITE rate of 4/s; the primary dies half way.
(cd "$WORK" && exec timeout 60 sipp -sn uac 127.0.0.70:5060 -i 127.0.0.73 -p 5070 -r 5 -m 100 \
  -nostdin -timeout 40s -recv_timeout 5000 > uac.log 2>&1) &
uac=$!
sleep 10
kill -KILL "$primary"
wait_log "$WORK/sippool.log" pair_switched
wait "$uac" || true
# The history is sampled every 5 s: wait for a sample taken after the last call.
end=$(date +%s)
history_until() {
  curl -s --max-time 2 http://127.0.0.70:8080/status/history |
    python3 -c 'import json,sys; t=json.load(sys.stdin)["t"]; sys.exit(0 if t and t[-1] >= float(sys.argv[1]) else 1)' "$1"
}
for _ in $(seq 60); do history_until "$end" && break; sleep 0.2; done
history_until "$end" || { echo "no history sample after the calls"; exit 1; }
flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --disable-quic --user-data-dir="$WORK/profile"
       --virtual-time-budget=4000 --window-size=1100,900)
"$CHROME" "${flags[@]}" --dump-dom http://127.0.0.70:8080/ > "$WORK/dom.html" 2>/dev/null
"$CHROME" "${flags[@]}" --screenshot="$SHOT" http://127.0.0.70:8080/ > /dev/null 2>&1
ok=1
grep -q "active: backup" "$WORK/dom.html" || { echo "dashboard does not show the backup as active"; ok=0; }
grep -q "dashboard-demo" "$WORK/dom.html" || { echo "dashboard does not show the instance"; ok=0; }
# Charts: data-nonzero counts the samples above zero; a switch mark is a line of class
# "switch" inside a chart.
chart() { grep -Eq "<svg data-chart=\"$1\" data-points=\"[0-9]+\" data-nonzero=\"[1-9]" "$WORK/dom.html"; }
chart calls || { echo "the calls chart is empty"; ok=0; }
chart 503 || { echo "the 503 chart is empty"; ok=0; }
chart rtt-site-a || { echo "the probe RTT chart is empty"; ok=0; }
marks=$(grep -o 'class="switch" data-pair="site-a" data-to="backup"' "$WORK/dom.html" | wc -l)
[ "$marks" -ge 3 ] || { echo "the switch is not marked on the calls, 503 and RTT charts ($marks marks)"; ok=0; }
[ -s "$SHOT" ] || { echo "no screenshot"; ok=0; }
if [ $ok = 1 ]; then
  echo "dashboard: screenshot $SHOT; 1 passed, 0 failed"
else
  echo "dashboard e2e: failed, logs in $WORK"; exit 1
fi

#!/usr/bin/env bash
# The dashboard in a real browser: headless Chromium opens sippool's `/`, its script fetches
# /status, and the rendered page must show the pair's active member after a switch (the
# primary here never answers, so the backup takes over). A screenshot is kept.
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
[http]
address = "127.0.0.70:8080"
TOML
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/uas_ha.xml" -i 127.0.0.72 -p 5060 -nostdin -timeout 60s > uas.log 2>&1) &
pids+=($!)
wait_udp 127.0.0.72 5060
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" pair_switched
flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --disable-quic --user-data-dir="$WORK/profile"
       --virtual-time-budget=4000 --window-size=1100,700)
"$CHROME" "${flags[@]}" --dump-dom http://127.0.0.70:8080/ > "$WORK/dom.html" 2>/dev/null
"$CHROME" "${flags[@]}" --screenshot="$SHOT" http://127.0.0.70:8080/ > /dev/null 2>&1
ok=1
grep -q "active: backup" "$WORK/dom.html" || { echo "dashboard does not show the backup as active"; ok=0; }
grep -q "dashboard-demo" "$WORK/dom.html" || { echo "dashboard does not show the instance"; ok=0; }
[ -s "$SHOT" ] || { echo "no screenshot"; ok=0; }
if [ $ok = 1 ]; then
  echo "dashboard: screenshot $SHOT; 1 passed, 0 failed"
  rm -rf "$WORK"
else
  echo "dashboard e2e: failed, logs in $WORK"; exit 1
fi

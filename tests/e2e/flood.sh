#!/usr/bin/env bash
# Flood: 50,000 INVITEs as fast as one sender can with invite_rate = 100. sippool must keep
# its peak memory under MAX_RSS_KB and answer OPTIONS throughout.
#
#   tests/e2e/flood.sh [COUNT] [MAX_RSS_KB]       default 50000 INVITEs, 65536 KiB
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
COUNT="${1:-50000}"
MAX_RSS_KB="${2:-65536}"
e2e_init flood

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "flood"
[[listen]]
transport = "udp"
address = "127.0.0.50:5060"
[[pair]]
name = "p"
primary = "127.0.0.51:5060"
backup = "127.0.0.52:5060"
[overload]
invite_rate = 100
TOML
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/uas_ha.xml" -i 127.0.0.51 -p 5060 -nostdin -timeout 60s > uas.log 2>&1) &
pids+=($!)
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
proxy=$!
pids+=($proxy)
wait_log "$WORK/sippool.log" proxy_initialised
rss_before=$(awk '/VmRSS/{print $2}' /proc/$proxy/status)
result=$(python3 "$ROOT/tests/e2e/flood.py" 127.0.0.50:5060 127.0.0.53 "$COUNT")
hwm=$(awk '/VmHWM/{print $2}' /proc/$proxy/status)
echo "flood: $result rss_before_kb=$rss_before peak_rss_kb=$hwm limit_kb=$MAX_RSS_KB"
grep -E "overload_started|overload_ended" "$WORK/sippool.log" | head -2
val() { tr ' ' '\n' <<<"$result" | awk -F= -v k="$1" '$1==k{print $2}'; }
ok=1
[ "$hwm" -le "$MAX_RSS_KB" ] || { echo "peak memory $hwm KiB over $MAX_RSS_KB"; ok=0; }
[ "$(val seconds_without_options_answer)" = 0 ] || { echo "OPTIONS went unanswered for a whole second"; ok=0; }
[ "$(val got_503)" -gt 0 ] || { echo "no 503 under flood"; ok=0; }
grep -q overload_started "$WORK/sippool.log" || { echo "no overload_started event"; ok=0; }
if [ $ok = 1 ]; then
  echo "flood: 1 passed, 0 failed"
else
  echo "flood: failed, logs in $WORK"
  exit 1
fi

#!/usr/bin/env bash
# Observability end to end: SIPp calls through sippool, then `promtool check metrics` on
# /metrics, and a real Prometheus server on loopback scraping sippool, its series checked
# through the Prometheus HTTP API. Needs the Debian package prometheus.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
PROM=$(command -v prometheus) || { echo "prometheus not found (apt-get install prometheus)" >&2; exit 2; }
e2e_init prom

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "prom"
[[listen]]
transport = "udp"
address = "127.0.0.60:5060"
[[pair]]
name = "site"
primary = "127.0.0.61:5060"
backup = "127.0.0.62:5060"
[health]
oos_check = 1
[http]
address = "127.0.0.60:8080"
TOML
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/uas_ha.xml" -i 127.0.0.61 -p 5060 -nostdin -timeout 60s > uas.log 2>&1) &
pids+=($!)
(cd "$WORK" && exec sipp -sf "$ROOT/tests/e2e/uas_ha.xml" -i 127.0.0.62 -p 5060 -nostdin -timeout 60s > uas2.log 2>&1) &
pids+=($!)
wait_udp 127.0.0.61 5060
wait_udp 127.0.0.62 5060
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised
(cd "$WORK" && timeout 60 sipp -sn uac 127.0.0.60:5060 -i 127.0.0.63 -p 5070 -r 50 -m 100 -nostdin -timeout 50s > uac.log 2>&1)

curl -sf http://127.0.0.60:8080/metrics > "$WORK/metrics.txt"
echo "promtool check metrics:"
if ! promtool check metrics < "$WORK/metrics.txt"; then
  echo "promtool found problems"; exit 1
fi

cat > "$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sippool
    static_configs:
      - targets: ["127.0.0.60:8080"]
YML
"$PROM" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address=127.0.0.64:9090 > "$WORK/prometheus.log" 2>&1 &
pids+=($!)
value=""
for _ in $(seq 150); do
  value=$(curl -sf 'http://127.0.0.64:9090/api/v1/query?query=sippool_requests_received_total%7Bmethod%3D%22INVITE%22%7D' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null || true)
  [ -n "$value" ] && break
  sleep 0.2
done
up=$(curl -sf 'http://127.0.0.64:9090/api/v1/query?query=sippool_upstream_active%7Bmember%3D%22primary%22%7D' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")')
echo "prometheus: sippool_requests_received_total{method=INVITE}=$value sippool_upstream_active{member=primary}=$up"
if [ "$value" = 100 ] && [ "$up" = 1 ]; then
  echo "prometheus e2e: 2 passed, 0 failed"
else
  echo "prometheus e2e: failed, logs in $WORK"; exit 1
fi

#!/usr/bin/env bash
# Memory per idle TLS connection: sippool (release) with a TLS listener; N clients
# (bench/tls_idle_clients.py) complete a handshake and one CRLF ping each, then idle. Prints
# sippool's PSS before and with the connections, and the difference per connection.
#
#   bench/tls_idle_memory.sh [N] [tls|tcp]     default 10000 tls
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
N="${1:-10000}"
KIND="${2:-tls}"
e2e_init tlsmem
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
make_cert "$WORK" 127.0.0.60
cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "tls-idle"
advertised_host = "127.0.0.60"
[[listen]]
transport = "udp"
address = "127.0.0.60:5060"
[[listen]]
transport = "tls"
address = "127.0.0.60:5061"
[[listen]]
transport = "tcp"
address = "127.0.0.60:5062"
[[pair]]
name = "p"
primary = "127.0.0.61:5060"
backup = "127.0.0.62:5060"
[health]
oos_check = 0
[limits]
max_connections_per_ip = 1000
idle_timeout_s = 3600
[tls]
cert = "$WORK/proxy.pem"
key = "$WORK/proxy.key"
TOML
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
proxy=$!
pids+=($proxy)
wait_log "$WORK/sippool.log" proxy_initialised
pss() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup"; }
rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
before_pss=$(pss $proxy); before_rss=$(rss $proxy)
fifo="$WORK/hold"; mkfifo "$fifo"
if [ "$KIND" = tls ]; then port=5061; ca="$WORK/ca.pem"; else port=5062; ca=-; fi
python3 "$ROOT/bench/tls_idle_clients.py" 127.0.0.60 $port "$ca" "$N" < "$fifo" > "$WORK/clients.log" 2>&1 &
pids+=($!)
exec 3> "$fifo"
wait_log_long() { for _ in $(seq 1200); do grep -q "$2" "$1" && return 0; sleep 0.1; done; cat "$1"; return 1; }
wait_log_long "$WORK/clients.log" READY
sleep 1 # let allocator and kernel settle before reading
after_pss=$(pss $proxy); after_rss=$(rss $proxy)
echo "idle $KIND connections: $(grep READY "$WORK/clients.log" | cut -d' ' -f2)"
echo "sippool PSS: ${before_pss} KiB before, ${after_pss} KiB with them; RSS ${before_rss} -> ${after_rss} KiB"
awk -v k="$KIND" -v b="$before_pss" -v a="$after_pss" -v n="$N" 'BEGIN{printf "per idle %s connection: %.1f KiB (PSS)\n", k, (a-b)/n}'
exec 3>&-

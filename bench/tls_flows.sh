#!/usr/bin/env bash
# Many concurrent TLS flows on one instance (issue 18): sippool (release) with a TLS
# listener; P client processes (bench/tls_flows_clients.py) open N TLS connections from
# several loopback source addresses (PER_ADDR per address) and keep them alive with CRLFCRLF
# pings (RFC 5626) every PING_S seconds; the proxy closes a connection idle for
# IDLE_S (60) seconds, so only the keep-alives keep them open. K more phones
# (bench/tls_flow_probe.py) REGISTER through the proxy, so that their connections carry
# flows. Once everything is open, the connections are held HOLD_S seconds (longer than the
# idle timeout), then the registrar sends a MESSAGE to every registered phone along its
# Path: it must arrive over that phone's own TLS connection and be answered 200.
#
# Prints sippool's PSS and RSS before, with the connections open and after the hold, per
# connection; the open connections the proxy counts; the pings answered; and the MESSAGEs
# that reached their flow.
#
#   bench/tls_flows.sh [N] [P]        default 100000 connections over 4 client processes
#   env: PER_ADDR (2000), PING_S (20), HOLD_S (90), K (3)
#
# Every process needs a file descriptor per connection: the script raises its soft limit
# to the hard one (ulimit -n). Where the hard limit is below what N needs (raising it takes
# CAP_SYS_RESOURCE), N is lowered to what fits and the script says so.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
N="${1:-100000}"
P="${2:-4}"
PER_ADDR="${PER_ADDR:-2000}"
PING_S="${PING_S:-20}"
HOLD_S="${HOLD_S:-90}"
IDLE_S=60
K="${K:-3}"
e2e_init tlsflows

# File descriptors: the proxy holds one per connection (and ~50 of its own); each client
# process one per connection it opens.
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
want=$((N + K + 200))
if [ "$hard" -lt "$want" ]; then
  echo "LIMITED: $N connections need $want file descriptors in the proxy; the hard limit (ulimit -Hn) is $hard and cannot be raised here (no CAP_SYS_RESOURCE): N lowered to $((hard - K - 200))"
  N=$((hard - K - 200))
fi
ulimit -n "$hard"
per_client=$(((N + P - 1) / P))
if [ $((per_client + 200)) -gt "$hard" ]; then
  echo "each of $P client processes would need $per_client descriptors (> $hard): use more processes" >&2
  exit 2
fi

PROXY=127.0.0.80
make_cert "$WORK" $PROXY
cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "tls-flows"
advertised_host = "$PROXY"
[[listen]]
transport = "udp"
address = "$PROXY:5060"
[[listen]]
transport = "tls"
address = "$PROXY:5061"
[[pair]]
name = "p"
primary = "127.0.0.81:5060"
backup = "127.0.0.82:5060"
[health]
oos_check = 0
[limits]
max_connections = $((N + K + 1000))
max_connections_per_ip = $((PER_ADDR + 10))
idle_timeout_s = $IDLE_S
[http]
address = "$PROXY:8090"
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
open_conns() { curl -s "http://$PROXY:8090/metrics" | awk '/^sippool_connections_open\{kind="tls"\}/{print $2}'; }
per_conn() { awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN{printf "%.1f", (a-b)/n}'; }
before_pss=$(pss $proxy); before_rss=$(rss $proxy)

# The registrar and its phones (their flows), first.
mkfifo "$WORK/probe.in"
python3 "$ROOT/bench/tls_flow_probe.py" $PROXY 5061 5060 "$WORK/ca.pem" 127.0.0.81 5060 "$K" \
  < "$WORK/probe.in" > "$WORK/probe.log" 2>&1 &
pids+=($!)
exec 4> "$WORK/probe.in"
wait_grep "$WORK/probe.log" "^REGISTERED $K" 30 || { cat "$WORK/probe.log"; exit 1; }

# The mass of connections, P processes, each its own range of source addresses.
start=$SECONDS
for p in $(seq 0 $((P - 1))); do
  first=$((p * per_client)); last=$(((p + 1) * per_client)); [ $last -gt "$N" ] && last=$N
  mkfifo "$WORK/hold.$p"
  python3 "$ROOT/bench/tls_flows_clients.py" $PROXY 5061 "$WORK/ca.pem" $first $last \
    "$PER_ADDR" "$PING_S" < "$WORK/hold.$p" > "$WORK/clients.$p.log" 2>&1 &
  pids+=($!)
  eval "exec $((10 + p))> \"$WORK/hold.$p\""
done
for p in $(seq 0 $((P - 1))); do
  wait_grep "$WORK/clients.$p.log" "^READY" 1800 || { cat "$WORK/clients.$p.log"; exit 1; }
done
opened=$((SECONDS - start))
sum_ready() { cat "$WORK"/clients.*.log | awk -v f="$1" '$1=="READY"{s+=$f} END{print s+0}'; }
ok=$(sum_ready 2); failed=$(sum_ready 3)
sleep 2 # let the last pongs go out before reading memory
open_pss=$(pss $proxy); open_rss=$(rss $proxy); open_count=$(open_conns)
echo "opened: $ok TLS connections in ${opened} s ($failed failed), proxy counts $open_count open (with $K registered phones)"
echo "sippool PSS: ${before_pss} KiB before, ${open_pss} KiB with them; RSS ${before_rss} -> ${open_rss} KiB"
echo "per connection: $(per_conn "$before_pss" "$open_pss" "$open_count") KiB PSS, $(per_conn "$before_rss" "$open_rss" "$open_count") KiB RSS"

# Held past the idle timeout: only the keep-alives keep them open.
sleep "$HOLD_S"
held_pss=$(pss $proxy); held_rss=$(rss $proxy); held_count=$(open_conns)
last_stats() { for f in "$WORK"/clients.*.log; do grep '^STATS' "$f" | tail -1; done | awk -v f="$1" '{s+=$f} END{print s+0}'; }
echo "after ${HOLD_S} s (idle timeout ${IDLE_S} s, pings every ~${PING_S} s): proxy counts $held_count open; clients: $(last_stats 2) open, $(last_stats 3) pings answered, $(last_stats 4) unanswered, $(last_stats 5) connections lost"
echo "sippool PSS ${held_pss} KiB, RSS ${held_rss} KiB: $(per_conn "$before_pss" "$held_pss" "$held_count") KiB PSS per connection"

# A request toward each registered flow, from the upstream side.
echo CALL >&4
wait_grep "$WORK/probe.log" "^CALLED" 60 || { cat "$WORK/probe.log"; exit 1; }
grep -E '^(REACHED|LOST)' "$WORK/probe.log"
called=$(awk '/^CALLED/{print $2}' "$WORK/probe.log")
echo "requests over their flow among $held_count open connections: $called answered 200"
for p in $(seq 0 $((P - 1))); do eval "exec $((10 + p))>&-"; done
exec 4>&-
[ "$called" = "$K/$K" ]

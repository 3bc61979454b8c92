#!/usr/bin/env bash
# End-to-end TLS load: Debian's SIPp has no TLS, so a socat bridge turns SIPp's TCP into
# TLS toward sippool (one TLS connection per SIPp connection); sippool forwards over UDP
# to SIPp's UAS. Every call must succeed.
#
#   tests/e2e/sipp_tls.sh [CALLS] [RATE] [t1|tn]   default 2000 calls at 200 calls/s, t1
#
# Loopback only: sippool on 127.0.0.23 (UDP 5060, TLS 5061), the UAS on 127.0.0.24, the
# UAC on 127.0.0.25 with its bridge listening on 127.0.0.25:5090.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
CALLS="${1:-2000}"
RATE="${2:-200}"
# t1: one connection for all calls; tn: one per call (a TLS handshake per call).
MODE="${3:-t1}"
e2e_init tls
command -v socat >/dev/null || { echo "socat not found (apt-get install socat)" >&2; exit 2; }
make_cert "$WORK" 127.0.0.23

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "e2e-tls"
advertised_host = "127.0.0.23"
[[listen]]
transport = "udp"
address = "127.0.0.23:5060"
[[listen]]
transport = "tls"
address = "127.0.0.23:5061"
[[pair]]
name = "e2e"
primary = "127.0.0.24:5060;transport=udp"
backup = "127.0.0.24:5062;transport=udp"
# SIPp's built-in UAS does not answer OPTIONS.
[health]
oos_check = 0
[http]
address = "127.0.0.23:8082"
[tls]
cert = "$WORK/proxy.pem"
key = "$WORK/proxy.key"
TOML

"$BIN" check-config "$WORK/sippool.toml"
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
sipp -sn uas -i 127.0.0.24 -p 5060 -nostdin -timeout 120s > "$WORK/uas.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised
wait_udp 127.0.0.24 5060
# The bridge verifies sippool's certificate against the test CA.
socat TCP-LISTEN:5090,bind=127.0.0.25,reuseaddr,fork \
  "OPENSSL:127.0.0.23:5061,cafile=$WORK/ca.pem,verify=1,commonname=127.0.0.23" \
  2> "$WORK/socat.log" &
pids+=($!)
for _ in $(seq 100); do
  ss -ltn 2>/dev/null | grep -q '127.0.0.25:5090' && break
  sleep 0.1
done

# -rsa: packets go to the bridge; the Request-URI still names sippool (SIPp puts its
# remote host in the Request-URI of ACK and BYE).
if timeout 120 sipp -sn uac 127.0.0.23:5061 -rsa 127.0.0.25:5090 -t "$MODE" -max_socket 5000 -i 127.0.0.25 -p 5091 \
    -r "$RATE" -m "$CALLS" -nostdin -timeout 100s -recv_timeout 10000 \
    -trace_stat -stf "$WORK/uac.csv" > "$WORK/uac.log" 2>&1; then
  rc=0
else
  rc=$?
fi
ok=$(sipp_stat "$WORK/uac.csv" "SuccessfulCall(C)")
failed=$(sipp_stat "$WORK/uac.csv" "FailedCall(C)")
handshakes=$(curl -s http://127.0.0.23:8082/metrics | awk '/^sippool_parse_errors_total\{reason="tls_handshake"\}/{print $2}')
echo "sipp over TLS (socat bridge, $MODE): calls=$CALLS successful=$ok failed=$failed rc=$rc failed_handshakes=${handshakes:-0}"
if [ "$rc" != 0 ] || [ "$ok" != "$CALLS" ] || [ "$failed" != 0 ]; then
  tail -30 "$WORK/uac.log"
  tail -20 "$WORK/socat.log"
  echo "e2e tls: failed, logs in $WORK"
  exit 1
fi

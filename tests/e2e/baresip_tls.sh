#!/usr/bin/env bash
# End-to-end with a real phone: baresip registers over TLS through sippool to a test
# registrar (tests/e2e/registrar.py, over UDP), accepts no inbound connection (its TLS
# listener is not advertised to anyone), and then receives a call from that registrar along
# the Path sippool added: over its own TLS connection. It answers, the registrar hangs up.
#
#   tests/e2e/baresip_tls.sh
#
# Loopback only: sippool on 127.0.0.40 (UDP 5060, TLS 5061), registrar on 127.0.0.41,
# baresip on 127.0.0.42. Certificates are made here with openssl.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
e2e_init baresip
command -v baresip >/dev/null || { echo "baresip not found (apt-get install baresip-core)" >&2; exit 2; }

make_cert "$WORK" 127.0.0.40

cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "baresip-e2e"
advertised_host = "127.0.0.40"
[[listen]]
transport = "udp"
address = "127.0.0.40:5060"
[[listen]]
transport = "tls"
address = "127.0.0.40:5061"
[[pair]]
name = "pbx"
primary = "127.0.0.41:5060;transport=udp"
backup = "127.0.0.41:5062;transport=udp"
[health]
oos_check = 0
[tls]
cert = "$WORK/proxy.pem"
key = "$WORK/proxy.key"
[http]
address = "127.0.0.40:8081"
[flow]
token_key = "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOML

mkdir -p "$WORK/baresip"
cat > "$WORK/baresip/config" <<CONF
poll_method		epoll
sip_listen		127.0.0.42:5070
sip_cafile		$WORK/ca.pem
audio_player		aufile,$WORK/heard.wav
audio_source		ausine,440
ausrc_srate		48000
ausrc_channels		2
auplay_channels		2
auplay_srate		48000
audio_alert		aufile,$WORK/alert.wav
module_path		/usr/lib/baresip/modules
module			g711.so
module			aufile.so
module			ausine.so
module_app		account.so
module_app		menu.so
CONF
# The account: registrar reached through sippool over TLS; answer calls at once.
echo "<sip:alice@127.0.0.41;transport=tls>;outbound=\"sip:127.0.0.40:5061;transport=tls\";answermode=auto;regint=60;audio_codecs=PCMU" \
  > "$WORK/baresip/accounts"

"$BIN" check-config "$WORK/sippool.toml"
"$BIN" run --config "$WORK/sippool.toml" > "$WORK/sippool.log" 2>&1 &
pids+=($!)
wait_log "$WORK/sippool.log" proxy_initialised
python3 "$ROOT/tests/e2e/registrar.py" 127.0.0.41 5060 30 > "$WORK/registrar.log" 2>&1 &
reg=$!
wait_udp 127.0.0.41 5060
baresip -f "$WORK/baresip" -t 40 > "$WORK/baresip.log" 2>&1 < /dev/null &
pids+=($!)

if wait "$reg"; then
  rc=0
else
  rc=$?
fi
cat "$WORK/registrar.log"
# The phone took the call and saw it end; sippool never connected to the phone's own
# listener: the one TLS connection is the phone's, and it carries the flow.
metrics=$(curl -s http://127.0.0.40:8081/metrics)
tls_conns=$(echo "$metrics" | awk '/^sippool_connections_open\{kind="tls"\}/{print $2}')
tls_flows=$(echo "$metrics" | awk '/^sippool_flows_open\{kind="tls"\}/{print $2}')
echo "sippool: tls connections open=$tls_conns, flows=$tls_flows"
grep -q "Call established" "$WORK/baresip.log" || rc=3
wait_log "$WORK/baresip.log" "session closed" || rc=4
[ "$tls_conns" = 1 ] && [ "$tls_flows" = 1 ] || rc=5
if [ "$rc" != 0 ]; then
  echo "baresip over TLS: FAILED (code $rc: 1 registrar, 3 not established, 4 not ended, 5 connections)"
  tail -40 "$WORK/baresip.log"
  tail -20 "$WORK/sippool.log"
  exit 1
fi
echo "baresip over TLS: registered, called over its own connection, answered, hung up"

#!/usr/bin/env bash
# End-to-end with software the project does not write: real phones calling each other
# through sippool and a real registrar pair.
#
#   tests/e2e/phones_registrar.sh          (SIPPOOL_BIN=PATH to run another sippool binary)
#
# - Registrar: Kamailio (Debian, registrar + usrloc + rr, tests/e2e/kamailio/registrar.cfg)
#   as a primary/backup pair behind sippool, both on one SQLite location table (usrloc
#   db_mode 3, db_sqlite), so what one saved the other finds.
# - Phones, all finding sippool by the pool's name pool.sippool.test, served by dnsmasq:
#   alice: baresip over TLS (its `dns_server` line names dnsmasq);
#   bob: linphonec over TLS (belle-sip reads only /etc/resolv.conf, so linphonec runs in its
#        own mount namespace, `unshare -m`, with a resolv.conf naming dnsmasq bind-mounted
#        over /etc/resolv.conf; it checks the certificate's name against pool.sippool.test);
#   carol: baresip over UDP with RFC 5626 outbound, keeping its flow with STUN keep-alives
#        every Flow-Timer (4 s, set by Kamailio).
#
# Steps, each printed PASS or FAIL with its evidence: the three phones register through
# sippool and the primary (Path kept, binding in the shared table); alice calls bob and bob
# calls alice (established, ACK delivered to the callee, BYE answered 200); the primary
# Kamailio is killed with SIGKILL and a call still completes through the backup; bob's
# process is killed and a call to him gets 430 Flow Failed back to alice; after a dozen
# keep-alive periods carol still has the flow she registered (no failed keep-alive, no new
# REGISTER, sippool answered her STUN requests) and is reached over it.
#
# Loopback only: sippool 127.0.0.90 (UDP 5060, TLS 5061, HTTP 8080), Kamailio primary
# 127.0.0.91 and backup 127.0.0.92 (UDP 5060), alice 127.0.0.93, bob 127.0.0.94, carol
# 127.0.0.95, dnsmasq 127.0.0.96:53 (port 53 because resolv.conf has no port). Needs root
# (dnsmasq on port 53, unshare -m and mount for linphonec). About 55 s.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/tests/e2e/lib.sh"
e2e_init phones
for c in kamailio linphonec baresip dnsmasq sqlite3 curl unshare; do
  command -v "$c" >/dev/null || {
    echo "$c not found (apt-get install kamailio kamailio-sqlite-modules linphone-cli baresip-core dnsmasq-base sqlite3 curl)" >&2
    exit 2
  }
done

P=127.0.0.90 KA=127.0.0.91 KB=127.0.0.92 ALICE=127.0.0.93 BOB=127.0.0.94 CAROL=127.0.0.95
DNS=127.0.0.96 POOL=pool.sippool.test DOMAIN=pbx.sippool.test
# The phones' outbound proxy: the pool's name (PHONES_BY_ADDRESS=1: its address, to tell a
# problem with names from others).
HOST=$POOL
[ "${PHONES_BY_ADDRESS:-0}" = 1 ] && HOST=$P
METRICS="http://$P:8080/metrics"
# Every long-lived process runs under `timeout` (a safety net if this script is killed),
# which makes it the leader of its own process group: those groups are killed on exit.
groups=()
# linphonec --pipe opens this socket (not used here); removed on exit unless it was there.
lpsock="/tmp/linphonec-$(id -u)"
[ -e "$lpsock" ] && lpsock=""
phones_cleanup() {
  local rc=$?
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  e2e_cleanup "$rc"
  [ -z "$lpsock" ] || rm -f "$lpsock"
}
trap phones_cleanup EXIT
# spawn NAME CMD...: runs CMD in the background (its own process group, at most 200 s),
# output in $WORK/NAME.log; sets $spawned to the group's id.
spawn() {
  local name=$1
  shift
  timeout -s KILL 200 "$@" > "$WORK/$name.log" 2>&1 < /dev/null &
  spawned=$!
  groups+=("$spawned")
  pids+=("$spawned")
}

failed=()
pass() { echo "PASS: $1"; }
fail() {
  echo "FAIL: $1"
  failed+=("$1")
}
# check NAME EVIDENCE-FILE PATTERN [SECONDS]: PASS when PATTERN shows up in the file in time.
check() {
  if wait_grep "$2" "$3" "${4:-8}"; then
    pass "$1 [$(basename "$2"): $(grep -Em1 -- "$3" "$2" | cut -c1-160)]"
  else
    fail "$1 [no /$3/ in $(basename "$2")]"
  fi
}
# count FILE PATTERN: how many lines of FILE match.
count() { grep -Ec -- "$2" "$1" 2>/dev/null || true; }
dial_baresip() { printf '/dial %s\n' "$2" > "/dev/udp/$1/5555"; }
hangup_baresip() { printf '/hangup\n' > "/dev/udp/$1/5555"; }

# --- certificates, DNS, location table ------------------------------------------------------
make_cert "$WORK" "$P" "DNS:$POOL"
spawn dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --user=root --pid-file= --local-ttl=1 --listen-address="$DNS" --port=53 \
  --host-record="$POOL,$P" --srv-host="_sips._tcp.$POOL,$POOL,5061" \
  --srv-host="_sip._udp.$POOL,$POOL,5060" --log-queries --log-facility=-
printf 'nameserver %s\n' "$DNS" > "$WORK/resolv.conf"

DB="$WORK/location.sqlite"
sqlite3 "$DB" < /usr/share/kamailio/db_sqlite/standard-create.sql
sqlite3 "$DB" < /usr/share/kamailio/db_sqlite/usrloc-create.sql
sqlite3 "$DB" 'PRAGMA journal_mode=WAL;' > /dev/null

# --- the registrar pair ----------------------------------------------------------------------
kamailio_start() { # NAME IP
  mkdir -p "$WORK/$1"
  spawn "$1" kamailio -f "$ROOT/tests/e2e/kamailio/registrar.cfg" -DD -E -m 32 -M 4 \
    -Y "$WORK/$1" -w "$WORK/$1" -l "udp:$2:5060" -A "DBURL=\"sqlite:///$DB\""
}
# One after the other: both read the shared SQLite file while they start, and two at once
# have failed with "database is locked" (the registrar then refuses its configuration).
kamailio_start kam-primary "$KA"
kam_primary=$spawned
wait_udp "$KA" 5060 || { tail -20 "$WORK/kam-primary.log"; exit 1; }
kamailio_start kam-backup "$KB"
wait_udp "$KB" 5060 || { tail -20 "$WORK/kam-backup.log"; exit 1; }

# --- sippool ---------------------------------------------------------------------------------
names="names = [\"$POOL\"]"
write_config() {
  cat > "$WORK/sippool.toml" <<TOML
[instance]
name = "phones-e2e"
advertised_host = "$P"
$names
[[listen]]
transport = "udp"
address = "$P:5060"
[[listen]]
transport = "tls"
address = "$P:5061"
[[pair]]
name = "pbx"
domain = "$DOMAIN"
primary = "$KA:5060;transport=udp"
backup = "$KB:5060;transport=udp"
[health]
oos_check = 1
oos_force = 1
probe_timeout_ms = 500
failover_timeout_ms = 1000
[dns]
servers = ["$DNS:53"]
[tls]
cert = "$WORK/proxy.pem"
key = "$WORK/proxy.key"
[http]
address = "$P:8080"
[runtime]
drain_timeout_s = 1
[flow]
token_key = "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOML
}
write_config
if "$BIN" check-config "$WORK/sippool.toml" > "$WORK/check-config.log" 2>&1; then
  pass "sippool accepts [instance] $names"
else
  fail "sippool accepts [instance] $names [$(tail -1 "$WORK/check-config.log")]; running without it"
  names=""
  write_config
  "$BIN" check-config "$WORK/sippool.toml"
fi
spawn sippool "$BIN" run --config "$WORK/sippool.toml"
wait_log "$WORK/sippool.log" proxy_initialised
for _ in $(seq 50); do
  [ "$(metric "$METRICS" sippool_upstream_up)" = 2 ] && break
  sleep 0.1
done

# --- phones ----------------------------------------------------------------------------------
baresip_config() { # NAME IP ACCOUNT-LINE
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/config" <<CONF
poll_method		epoll
sip_listen		$2:5070
sip_cafile		$WORK/ca.pem
dns_server		$DNS:53
audio_player		aufile,$WORK/$1/heard.wav
audio_source		ausine,440
audio_alert		aufile,$WORK/$1/alert.wav
ausrc_srate		48000
ausrc_channels		2
auplay_srate		48000
auplay_channels		2
rtp_ports		$((20000 + ${2##*.} * 100))-$((20000 + ${2##*.} * 100 + 99))
module_path		/usr/lib/baresip/modules
module			g711.so
module			aufile.so
module			ausine.so
module			uuid.so
module_app		account.so
module_app		menu.so
module_app		cons.so
cons_listen		$2:5555
CONF
  echo "$3" > "$WORK/$1/accounts"
}
# alice: TLS to the pool by name, answers at once.
baresip_config alice "$ALICE" \
  "<sip:alice@$DOMAIN;transport=tls>;outbound=\"sip:$HOST:5061;transport=tls\";answermode=auto;regint=600;audio_codecs=PCMU"
# carol: UDP with SIP outbound (reg-id, +sip.instance): STUN keep-alives every Flow-Timer.
baresip_config carol "$CAROL" \
  "<sip:carol@$DOMAIN>;sipnat=outbound;outbound=\"sip:$HOST:5060;transport=udp\";answermode=auto;regint=600;audio_codecs=PCMU"
spawn alice baresip -f "$WORK/alice" -s
spawn carol baresip -f "$WORK/carol" -s

# bob: linphonec, TLS only, the pool as its proxy (liblinphone sends REGISTER to the proxy
# and other requests along the route), certificate name checked. Driven through a FIFO on
# its stdin; --pipe makes it iterate every 20 ms instead of blocking in readline (it then
# also opens /tmp/linphonec-UID, unused here). -d 6 logs every SIP message to stdout.
mkdir -p "$WORK/bob/.local/share/linphone" # without it the core does not start
cat > "$WORK/bob/linphonerc" <<RC
[sip]
sip_port=0
sip_tcp_port=0
sip_tls_port=5071
bind_address=$BOB
root_ca=$WORK/ca.pem
verify_server_certs=1
verify_server_cn=$([ "$HOST" = "$P" ] && echo 0 || echo 1)
default_proxy=0
[rtp]
bind_address=$BOB
audio_rtp_port=20400-20499
[sound]
echocancellation=0
[proxy_0]
reg_proxy=<sip:$HOST:5061;transport=tls>
reg_route=<sip:$HOST:5061;transport=tls;lr>
reg_identity="bob" <sip:bob@$DOMAIN>
reg_expires=600
reg_sendregister=1
publish=0
RC
mkfifo "$WORK/bob/cmd"
linphonec_argv=(stdbuf -oL -eL linphonec --pipe -c "$WORK/bob/linphonerc" -a -d 6)
BOB_HOST=$HOST
if unshare -m true 2>/dev/null; then
  bob_dns="its own /etc/resolv.conf (unshare -m) naming dnsmasq"
  HOME="$WORK/bob" timeout -s KILL 200 unshare -m sh -c \
    'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$WORK/resolv.conf" "${linphonec_argv[@]}" \
    < "$WORK/bob/cmd" > "$WORK/bob.log" 2>&1 &
else
  # Where mount namespaces are not allowed, belle-sip cannot be pointed at another DNS
  # server: bob then reaches the pool by its address (belle-sip's name check, made against
  # the CN and DNS names only, is turned off: the certificate has the address as an IP SAN).
  bob_dns="NO DNS (unshare -m not allowed here): the pool's address $P"
  BOB_HOST=$P
  sed -i "s/$POOL/$P/" "$WORK/bob/linphonerc"
  sed -i "s/^verify_server_cn=1/verify_server_cn=0/" "$WORK/bob/linphonerc"
  HOME="$WORK/bob" timeout -s KILL 200 "${linphonec_argv[@]}" \
    < "$WORK/bob/cmd" > "$WORK/bob.log" 2>&1 &
fi
bob_group=$!
groups+=("$bob_group")
pids+=("$bob_group")
exec 7> "$WORK/bob/cmd"
bob_alive=1
linphonec_cmd() { [ "$bob_alive" = 1 ] && echo "$1" >&7; }
echo "bob (linphonec) resolves the pool with $bob_dns"

# --- 1. registration through sippool and the primary ---------------------------------------
check "alice (baresip, TLS) registered" "$WORK/alice.log" "alice@$DOMAIN: .*200 OK"
check "bob (linphonec, TLS) registered" "$WORK/bob.log" "to \[LinphoneRegistrationOk\]" 4
check "carol (baresip, UDP, outbound) registered" "$WORK/carol.log" "carol@$DOMAIN: .*200 OK" 4
carol_registered=$SECONDS
for u in alice bob carol; do
  check "the primary saved $u with sippool's Path" "$WORK/kam-primary.log" \
    "kam: saved sip:$u@$DOMAIN .*path=\[<sip:[^@]+@$P:5060;lr" 1
done
sqlite3 "$DB" "select username, contact, path from location;" > "$WORK/location.txt" 2>&1 || true
rows=$(sqlite3 "$DB" "select count(*) from location where path like '%@$P:5060;lr%';" 2>&1 || true)
if [ "$rows" = 3 ]; then
  pass "the shared location table holds the 3 bindings, each with sippool's Path"
else
  fail "the shared location table holds the 3 bindings with sippool's Path [$rows rows]"
fi
if [ "$HOST" = "$POOL" ]; then
  # The name exists only at dnsmasq; each phone sent its REGISTER to the pool's address.
  if timeout 3 getent hosts "$POOL" > /dev/null 2>&1; then
    fail "$POOL is unknown to the system's resolver (it must come from dnsmasq)"
  fi
  n=$(count "$WORK/dnsmasq.log" "query\[A\] $POOL from")
  want=$([ "$BOB_HOST" = "$POOL" ] && echo 3 || echo 2)
  if [ "$n" -ge "$want" ]; then
    pass "dnsmasq answered $n A queries for $POOL (one at least per phone that uses it: $want)"
  else
    fail "dnsmasq answered A queries for $POOL from the $want phones that use it [$n]"
  fi
  check "alice connected to the address dnsmasq gave" "$WORK/alice.log" "^TLS [0-9.:]+ -> $P:5061" 1
  check "carol sent to the address dnsmasq gave" "$WORK/carol.log" "^UDP $CAROL:5070 -> $P:5060" 1
  [ "$BOB_HOST" = "$POOL" ] \
    && check "bob resolved $POOL and connected there" "$WORK/bob.log" "Trying to connect to \[TLS://$P:5061\]" 1
  # baresip names the pool in a Route on every request (liblinphone on all but REGISTER,
  # which it sends to its proxy without one: bob's INVITE is checked below).
  check "alice's REGISTER named the pool in its Route" "$WORK/alice.log" "^Route: <sip:$POOL:5061;transport=tls;lr>" 1
  check "carol's REGISTER named the pool in its Route" "$WORK/carol.log" "^Route: <sip:$POOL:5060;transport=udp;lr>" 1
fi
tls_conns=$(metric "$METRICS" 'sippool_connections_open{kind="tls"')
[ "$tls_conns" = 2 ] && pass "sippool holds 2 TLS connections (alice's, bob's)" \
  || fail "sippool holds 2 TLS connections (alice's, bob's) [$tls_conns]"

# --- calls -------------------------------------------------------------------------------------
# sipmsgs FILE: one line per SIP message a phone's trace shows, "in" or "out", then the
# start line, then the CSeq method. Traces: baresip -s ("TLS a:p -> b:p" before each message;
# from sippool means received), linphonec -d 6 ("received [n] new bytes from" / "message sent
# to" before each message).
sipmsgs() {
  awk -v p="$P" '
    /^(TLS|UDP|TCP) [0-9.]+:[0-9]+ -> / {dir = (index($2, p ":") == 1) ? "in" : "out"; next}
    /belle-sip-message-channel .*: received \[[0-9]+\] new bytes from/ {dir = "in"; next}
    /belle-sip-message-channel .*: message sent to/ {dir = "out"; next}
    /^(SIP\/2\.0 [0-9][0-9][0-9]|[A-Z]+ sips?:[^ ]+ SIP\/2\.0)/ {sub(/\r$/, ""); start = $0; msgdir = dir; next}
    start != "" && /^CSeq: *[0-9]+ [A-Z]+/ {sub(/\r$/, ""); print msgdir "\t" start "\t" $3; start = ""}
  ' "$1"
}
# responses FILE METHOD: the status line of every response to METHOD the phone received.
responses() { sipmsgs "$1" | awk -F'\t' -v m="$2" '$1 == "in" && $2 ~ /^SIP/ && $3 == m {print $2}'; }
# finals FILE METHOD: how many final responses to METHOD the phone received.
finals() { responses "$1" "$2" | grep -vc '^SIP/2.0 1' || true; }
# received FILE METHOD: how many METHOD requests the phone received.
received() { sipmsgs "$1" | awk -F'\t' -v m="$2" '$1 == "in" && index($2, m " ") == 1 {n++} END {print n + 0}'; }
# sent FILE METHOD: how many METHOD requests the phone sent.
sent() { sipmsgs "$1" | awk -F'\t' -v m="$2" '$1 == "out" && index($2, m " ") == 1 {n++} END {print n + 0}'; }
# wait_received FILE METHOD BEFORE [SECONDS]: until the phone has received more than BEFORE.
wait_received() {
  local end=$((SECONDS + ${4:-8}))
  while [ "$(received "$1" "$2")" -le "$3" ]; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.2
  done
}
# last_received FILE METHOD: the start line of the last METHOD the phone received.
last_received() { sipmsgs "$1" | awk -F'\t' -v m="$2" '$1 == "in" && index($2, m " ") == 1 {l = $2} END {print substr(l, 1, 120)}'; }
# settle: no call left anywhere before the next step.
settle() {
  hangup_baresip "$ALICE"
  hangup_baresip "$CAROL"
  linphonec_cmd "terminate all" || true
  sleep 0.5
}
# last_of FILE PATTERN: the last matching line, shortened (evidence for the report).
last_of() { grep -E -- "$2" "$1" 2>/dev/null | tail -1 | tr -d '\r' | cut -c1-150; }
# bye_answered LABEL FILE BEFORE: the BYE sent by the phone with trace FILE got a final
# response, a 200 (BEFORE: how many final responses to BYE it had received before).
bye_answered() {
  local end=$((SECONDS + 8)) r=""
  while [ "$(finals "$2" BYE)" -le "$3" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
  [ "$(finals "$2" BYE)" -gt "$3" ] && r=$(responses "$2" BYE | grep -v '^SIP/2.0 1' | tail -1)
  if [[ "$r" == "SIP/2.0 200"* ]]; then
    pass "$1: BYE answered 200 [$(basename "$2"): $r]"
  else
    fail "$1: BYE answered 200 [$(basename "$2"): ${r:-no final response}]"
  fi
}

# dial PHONE USER / hangup PHONE: drive a phone.
dial() {
  case $1 in
    alice) dial_baresip "$ALICE" "sip:$2@$DOMAIN" ;;
    carol) dial_baresip "$CAROL" "sip:$2@$DOMAIN" ;;
    bob) linphonec_cmd "call sip:$2@$DOMAIN" ;;
  esac
}
hangup() {
  case $1 in
    alice) hangup_baresip "$ALICE" ;;
    carol) hangup_baresip "$CAROL" ;;
    bob) linphonec_cmd "terminate" ;;
  esac
}
# own_flow LABEL PHONE: the last INVITE PHONE received came over the flow it opened itself
# (the connection, or for UDP the socket, it registered from), not a new one to its listener.
own_flow() {
  local log="$WORK/$2.log" flow line
  if [ "$2" = bob ]; then
    flow="new bytes from \[TLS://$BOB_HOST:5061\]:"
    line=$(grep -B1 '^INVITE sip:' "$log" | grep -v '^INVITE' | grep -v '^--' | tail -1)
  else
    # the phone's side of its first message to sippool: "TLS 127.0.0.1:41470 -> 127.0.0.90:5061"
    flow=$(grep -Em1 "^(TLS|UDP) [0-9.:]+ -> $P:506[01]" "$log" | awk '{print $1 " " $4 " -> " $2}')
    line=$(grep -B1 '^INVITE sip:' "$log" | grep -E '^(TLS|UDP) ' | tail -1)
  fi
  if [ -n "$flow" ] && [[ "$line" =~ $flow ]]; then
    pass "$1: the INVITE reached $2 over $2's own flow [$2.log: $(echo "$line" | sed 's/^.*-message-//' | cut -c1-120)]"
  else
    fail "$1: the INVITE reached $2 over $2's own flow [$2.log: INVITE after '${line:-nothing}', flow '$flow']"
  fi
}

# call LABEL CALLER CALLEE: CALLER calls CALLEE, who answers at once; after a second CALLER
# hangs up. Checked on both phones' own traces: the caller gets 200 (and the phone says the
# call is up), the callee receives the ACK, the callee receives the BYE, the caller gets 200
# for it.
call() {
  local label=$1 a="$WORK/$2.log" b="$WORK/$3.log" inv ack bye byes r
  inv=$(finals "$a" INVITE)
  ack=$(received "$b" ACK)
  bye=$(received "$b" BYE)
  byes=$(finals "$a" BYE)
  dial "$2" "$3"
  local end=$((SECONDS + 8))
  while [ "$(finals "$a" INVITE)" -le "$inv" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
  r=$(responses "$a" INVITE | grep -v '^SIP/2.0 1' | tail -n +"$((inv + 1))" | head -1)
  if [[ "$r" != "SIP/2.0 200"* ]]; then
    fail "$label: established [$2.log: ${r:-no final response to the INVITE}] (ACK, BYE not tried)"
    return
  fi
  pass "$label: established [$2.log: $r; $(last_of "$a" "Call established|^Call [0-9]+ with .* connected")]"
  own_flow "$label" "$3"
  if wait_received "$b" ACK "$ack" 4; then
    pass "$label: ACK delivered to $3 [$3.log: $(last_received "$b" ACK)]"
  else
    fail "$label: ACK delivered to $3 [$3.log: no ACK received]"
  fi
  sleep 1
  hangup "$2"
  if wait_received "$b" BYE "$bye"; then
    pass "$label: BYE delivered to $3 [$3.log: $(last_received "$b" BYE)]"
  else
    fail "$label: BYE delivered to $3 [$3.log: no BYE received]"
  fi
  bye_answered "$label" "$a" "$byes"
}

# --- 2. alice calls bob, bob calls alice ---------------------------------------------------------
call "alice -> bob" alice bob
tls_conns=$(metric "$METRICS" 'sippool_connections_open{kind="tls"')
[ "$tls_conns" = 2 ] && pass "sippool still holds only the phones' 2 TLS connections" \
  || fail "sippool still holds only the phones' 2 TLS connections [$tls_conns]"
settle
call "bob -> alice" bob alice
[ "$BOB_HOST" = "$POOL" ] && check "bob's INVITE named the pool in its Route" "$WORK/bob.log" "^Route: <sip:$POOL:5061;transport=tls;lr>" 1
settle

# --- 4. the primary dies; calls go through the backup --------------------------------------------
kill -KILL -- "-$kam_primary"
echo "killed the primary Kamailio (SIGKILL to its process group)"
call "alice -> bob, primary dead" alice bob
check "the INVITE went through the backup" "$WORK/kam-backup.log" "kam: INVITE to sip:bob@"
sw=$(metric "$METRICS" sippool_pair_switches_total)
[ "$sw" -ge 1 ] && pass "sippool switched the pair to the backup [sippool_pair_switches_total $sw]" \
  || fail "sippool switched the pair to the backup [sippool_pair_switches_total $sw]"
settle

# --- 5. bob goes away: a call to him gets 430 back ----------------------------------------------
kill -KILL -- "-$bob_group"
bob_alive=0
echo "killed bob's linphonec (SIGKILL): its TLS connection is gone, its binding stays"
n=$(sqlite3 "$DB" "select count(*) from location where username='bob';" 2>&1 || true)
[ "$n" = 1 ] && pass "bob's binding is still in the location table (the registrar will send his calls)" \
  || fail "bob's binding is still in the location table [$n rows]"
for _ in $(seq 20); do
  [ "$(metric "$METRICS" 'sippool_connections_open{kind="tls"')" = 1 ] && break
  sleep 0.1
done
inv=$(finals "$WORK/alice.log" INVITE)
dial alice bob
end=$((SECONDS + 8))
while [ "$(finals "$WORK/alice.log" INVITE)" -le "$inv" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
r=$(responses "$WORK/alice.log" INVITE | grep -v '^SIP/2.0 1' | tail -n +"$((inv + 1))" | head -1)
if [[ "$r" == "SIP/2.0 430"* ]]; then
  pass "a call to bob, gone, gets 430 back at alice [alice.log: $r]"
else
  fail "a call to bob, gone, gets 430 back at alice [alice.log: ${r:-no final response}]"
fi
check "the backup relayed sippool's 430 to the caller" "$WORK/kam-backup.log" "kam: failure 430"
settle

# --- 6. carol (UDP, STUN keep-alives) keeps her flow and is reached over it ---------------------
# 50 s after her registration: more than a dozen Flow-Timer periods, and longer than a STUN
# transaction takes to time out (39.5 s), so an unanswered keep-alive has shown by then.
while [ $((SECONDS - carol_registered)) -lt 50 ]; do sleep 1; done
stun=$(metric "$METRICS" 'sippool_stun_requests_total{outcome="answered"')
[ "$stun" -ge 5 ] && pass "sippool answered carol's STUN keep-alives [sippool_stun_requests_total $stun]" \
  || fail "sippool answered carol's STUN keep-alives [sippool_stun_requests_total $stun]"
if ! grep -Eq "carol@$DOMAIN: .*200 OK" "$WORK/carol.log"; then
  fail "carol's flow never failed [carol never registered]"
elif grep -Eq "carol@$DOMAIN: Register: " "$WORK/carol.log"; then
  fail "carol's flow never failed [carol.log: $(last_of "$WORK/carol.log" "Register: ")]"
else
  pass "carol's flow never failed (no keep-alive failure in carol.log)"
fi
n=$(sent "$WORK/carol.log" REGISTER)
[ "$n" = 1 ] && pass "carol registered once and kept that flow (1 REGISTER sent in carol.log)" \
  || fail "carol registered once and kept that flow [$n REGISTERs sent in carol.log]"
call "alice -> carol, after $((SECONDS - carol_registered)) s of keep-alives" alice carol

# --- verdict -------------------------------------------------------------------------------------
curl -s --max-time 2 "$METRICS" > "$WORK/metrics.txt" || true
dropped=$(awk '/^sippool_messages_dropped_total/ {t += $NF} END {print t + 0}' "$WORK/metrics.txt")
[ "$dropped" = 0 ] && pass "sippool dropped no message [sippool_messages_dropped_total 0]" \
  || fail "sippool dropped no message [$(grep -E '^sippool_messages_dropped_total' "$WORK/metrics.txt" | grep -v ' 0$' | tr '\n' ' ')]"
local_errors=$(grep -E '^sippool_responses_sent_total\{class="[456]xx",origin="local"\}' "$WORK/metrics.txt" | tr '\n' ' ')
[ "$(echo "$local_errors" | awk '{t += $2} END {print t + 0}')" = 1 ] \
  && pass "sippool's only error response of its own was the 430 [$local_errors]" \
  || fail "sippool's only error response of its own was the 430 [$local_errors]"
echo "sippool: $(grep -E '^sippool_(responses_sent_total|messages_dropped_total|stun_requests_total|flows_open)' "$WORK/metrics.txt" | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
  echo "phones through sippool and a Kamailio pair: FAILED (${#failed[@]} steps, ${SECONDS} s), logs in $WORK"
  for f in sippool kam-primary kam-backup alice carol; do
    echo "--- $f.log (tail)"
    tail -25 "$WORK/$f.log"
  done
  echo "--- bob.log (SIP lines, tail)"
  grep -E '^(SIP/2\.0|[A-Z]+ sips?:)|^Call|Registration' "$WORK/bob.log" | tail -25
  exit 1
fi
echo "phones through sippool and a Kamailio pair: all steps passed (${SECONDS} s)"

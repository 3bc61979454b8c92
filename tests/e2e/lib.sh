# Shared helpers of the end-to-end scripts (sourced, not run).

# wait_udp IP PORT: waits (up to 10 s) until something listens on UDP IP:PORT.
wait_udp() {
  local hex
  hex=$(printf '%02X%02X%02X%02X:%04X' $(echo "$1" | awk -F. '{print $4,$3,$2,$1}') "$2")
  for _ in $(seq 100); do
    awk -v h="$hex" '$2==h{f=1} END{exit !f}' /proc/net/udp && return 0
    sleep 0.1
  done
  echo "nothing listens on udp $1:$2" >&2
  return 1
}

# wait_log FILE PATTERN: waits (up to 10 s) until FILE contains PATTERN.
wait_log() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "'$2' never appeared in $1" >&2
  cat "$1" >&2
  return 1
}

# e2e_init NAME: a work directory in $WORK, the release binary in $BIN (built if missing;
# SIPPOOL_BIN=PATH runs that binary instead), and every process whose pid is added to $pids
# stopped when the script exits (see e2e_cleanup).
e2e_init() {
  WORK="$(mktemp -d "/tmp/sippool-$1.XXXXXX")"
  BIN="${SIPPOOL_BIN:-$ROOT/target/release/sippool}"
  if [ -n "${SIPPOOL_BIN:-}" ]; then
    [ -x "$BIN" ] || { echo "SIPPOOL_BIN=$BIN is not an executable" >&2; exit 2; }
  fi
  [ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
  command -v sipp >/dev/null || { echo "sipp not found (apt-get install sip-tester)" >&2; exit 2; }
  pids=()
  trap e2e_cleanup EXIT
}

# e2e_cleanup [STATUS]: the work directory is removed when the script succeeds (STATUS, by
# default the exit status it is called with as the EXIT trap, is 0) and kept, with its
# logs, when it fails.
e2e_cleanup() {
  local rc=${1:-$?}
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" = 0 ]; then rm -rf "$WORK"; fi
}

# sipp_stat CSV COLUMN: the value of a column (by its header name, e.g. SuccessfulCall(C))
# on the last line of a SIPp -trace_stat file.
sipp_stat() {
  awk -F';' -v col="$2" 'NR==1{for(i=1;i<=NF;i++) if($i==col) c=i} END{print $c}' "$1"
}

# make_cert DIR IP [SAN]: a CA (DIR/ca.pem) and a certificate for IP signed by it
# (DIR/proxy.pem, DIR/proxy.key), made with openssl. SAN adds subjectAltName entries, e.g.
# "DNS:pool.example.test".
make_cert() {
  (
    cd "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=sippool e2e CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
      -keyout proxy.key -out proxy.csr 2>/dev/null
    printf 'subjectAltName=IP:%s%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$2" "${3:+,$3}" \
      > ext.cnf
    openssl x509 -req -in proxy.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile ext.cnf -out proxy.pem 2>/dev/null
  )
}

# wait_grep FILE PATTERN [SECONDS]: waits (up to SECONDS, default 10) until FILE contains
# the extended regular expression PATTERN; quiet, unlike wait_log (the caller reports).
wait_grep() {
  local end=$((SECONDS + ${3:-10}))
  while [ "$SECONDS" -lt "$end" ]; do
    grep -Eq -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  grep -Eq -- "$2" "$1" 2>/dev/null
}

# metric URL SERIES: the sum of every sample of SERIES (a metric name, optionally with a
# label filter such as 'name{kind="tls"' matched as a prefix) at URL; 0 if there is none.
metric() {
  curl -s --max-time 2 "$1" | awk -v s="$2" '
    index($0, s) == 1 && (s ~ /[{,]/ || substr($0, length(s) + 1, 1) ~ /[ {]/) {t += $NF}
    END {print t + 0}'
}

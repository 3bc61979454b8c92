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

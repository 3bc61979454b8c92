#!/usr/bin/env bash
# Offline checks of deploy/: every Kubernetes manifest against the bundled schemas
# (kubernetes-validate --strict: unknown fields are errors), the ConfigMap's config through
# `sippool check-config` with the environment the StatefulSet gives it, the systemd unit
# (systemd-analyze verify: any complaint fails), and the zone file (named-checkzone).
#
#   deploy/check.sh        (needs: pip install kubernetes-validate; bind9-utils; systemd)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release/sippool"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
WORK="$(mktemp -d /tmp/sippool-deploy.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# 1. Manifests. Kustomization, ServiceMonitor and PrometheusRule (CRDs) have no bundled
#    schema: the validator warns and skips them (deploy/monitoring/check.sh checks the
#    PrometheusRule's rules); everything else must pass on both versions.
for v in 1.31.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$v" "$ROOT"/deploy/k8s/*.yaml
done
# The ServiceMonitor must select a Service that has the port it scrapes, and the pods'
# scrape annotations must name the container's HTTP port.
python3 - "$ROOT/deploy/k8s" <<'PY'
import sys, yaml, glob
docs = [d for f in glob.glob(sys.argv[1] + "/*.yaml") for d in yaml.safe_load_all(open(f)) if d]
sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
sel = sm["spec"]["selector"]["matchLabels"]
port = sm["spec"]["endpoints"][0]["port"]
svcs = [d for d in docs if d["kind"] == "Service"
        and sel.items() <= d["metadata"].get("labels", {}).items()
        and any(p.get("name") == port for p in d["spec"]["ports"])]
assert svcs, f"ServiceMonitor selects no Service with a port named {port}"
sts = next(d for d in docs if d["kind"] == "StatefulSet")
ann = sts["spec"]["template"]["metadata"]["annotations"]
c = sts["spec"]["template"]["spec"]["containers"][0]
http = next(p for p in c["ports"] if p["name"] == "http")
assert ann["prometheus.io/port"] == str(http["containerPort"]), "scrape port"
grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
cfg = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["sippool.toml"]
drain = int(cfg.split("drain_timeout_s = ")[1].split()[0])
assert grace > drain + pause, f"grace {grace} s must exceed drain {drain} s + preStop {pause} s"
print(f"ServiceMonitor -> Service port {port}; grace {grace} s > drain {drain} s + preStop {pause} s")
PY
echo "manifests: valid (Kubernetes 1.31 and 1.37, strict)"

# 2. The ConfigMap's config, as a pod sees it.
python3 - "$ROOT/deploy/k8s/configmap.yaml" > "$WORK/sippool.toml" <<'PY'
import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["data"]["sippool.toml"])
PY
. "$ROOT/tests/e2e/lib.sh"
make_cert "$WORK" 192.0.2.11
sed -i "s|/etc/sippool/tls/tls.crt|$WORK/proxy.pem|; s|/etc/sippool/tls/tls.key|$WORK/proxy.key|" "$WORK/sippool.toml"
SIPPOOL__INSTANCE__NAME=sippool-0 \
SIPPOOL__INSTANCE__ADVERTISED_HOST=192.0.2.11 \
SIPPOOL__FLOW__TOKEN_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  "$BIN" check-config "$WORK/sippool.toml"

# 3. The systemd unit (pointed at this build).
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/local/bin/sippool|$BIN|g" "$ROOT/deploy/systemd/sippool.service" > "$WORK/sippool.service"
  out=$(systemd-analyze verify "$WORK/sippool.service" 2>&1 || true)
  if [ -n "$out" ]; then echo "$out"; exit 1; fi
  echo "systemd unit: verified"
fi

# 4. The zone.
named-checkzone -q example.com "$ROOT/deploy/dns/example.com.zone" || {
  named-checkzone example.com "$ROOT/deploy/dns/example.com.zone"; exit 1; }
echo "zone: loads"

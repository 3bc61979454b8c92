#!/usr/bin/env bash
# Checks of deploy/monitoring: the alert rules (promtool check rules), their unit tests
# (promtool test rules: each alert fired from synthetic series, and silent on healthy
# ones), the PrometheusRule in deploy/k8s generated from the same rules, the Grafana
# dashboard's JSON and queries (promtool parses them), and every series the rules and the
# dashboard query against what the release binary really exports (check_series.py).
# About 5 s.
#
#   deploy/monitoring/check.sh        (needs: promtool from the Debian package prometheus;
#                                      python3 with PyYAML; openssl)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/deploy/monitoring"
BIN="${SIPPOOL_BIN:-$ROOT/target/release/sippool}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
command -v promtool >/dev/null || { echo "promtool not found (apt-get install prometheus)" >&2; exit 2; }
WORK="$(mktemp -d /tmp/sippool-monitoring.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$HERE"

# 1. The rules load, and each alert fires (and only) where its tests say.
promtool check rules sippool.rules.yml
promtool test rules sippool.rules.test.yml

# 2. The PrometheusRule is the rules file, as prometheusrule.py writes it.
if ! python3 prometheusrule.py | diff -u "$ROOT/deploy/k8s/prometheusrule.yaml" - > "$WORK/rule.diff"; then
  cat "$WORK/rule.diff"
  echo "deploy/k8s/prometheusrule.yaml is not sippool.rules.yml; regenerate it:"
  echo "  python3 deploy/monitoring/prometheusrule.py > deploy/k8s/prometheusrule.yaml"
  exit 1
fi
echo "PrometheusRule: the same rules as sippool.rules.yml"

# 3. The dashboard: valid JSON, panel ids unique, panels on the grid without overlapping,
#    every query through the dashboard's data source variable, and every query valid
#    PromQL (Grafana's variables replaced, each query a recording rule for promtool).
python3 - grafana-dashboard.json "$WORK/dashboard.rules.yml" <<'PY'
import json, sys, yaml
d = json.load(open(sys.argv[1]))
panels = d["panels"]
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
cells = {}
for p in panels:
    g = p["gridPos"]
    assert g["x"] + g["w"] <= 24, f"panel {p['title']} is wider than the grid"
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['title']} overlap"
            cells[(x, y)] = p["title"]
    assert p["targets"], f"panel {p['title']} has no query"
    for t in [p] + p["targets"]:
        assert t["datasource"]["uid"] == "${datasource}", f"panel {p['title']}: data source"
assert any(v["type"] == "datasource" and v["name"] == "datasource"
           for v in d["templating"]["list"]), "no datasource variable"
grafana = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
records = []
for p in panels:
    for t in p["targets"]:
        expr = t["expr"]
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"panel {p['title']}: unknown variable in {expr}"
        records.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, open(sys.argv[2], "w"))
print(f"dashboard: {len(panels)} panels, JSON and layout valid; its {len(records)} queries:")
PY
promtool check rules "$WORK/dashboard.rules.yml"

# 4. Every series queried is one sippool exports.
. "$ROOT/tests/e2e/lib.sh"
make_cert "$WORK" 127.0.15.1
python3 check_series.py "$BIN" "$WORK/proxy.pem" "$WORK/proxy.key"
echo "monitoring: 4 passed, 0 failed"

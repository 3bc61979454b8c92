#!/usr/bin/env python3
"""Checks that every series the alert rules and the Grafana dashboard query is one sippool
really exports.

Starts the release binary on loopback (UDP, TCP and TLS listeners, a pair whose servers do
not answer, HTTP on a free port), sends it an OPTIONS over TCP and an INVITE over UDP so
that the families that only appear once used have samples, scrapes /metrics, and then for
every metric selector in every expression (rules: `expr`; dashboard: every target and
template query) checks that

  - the metric name is a sample name in the scrape (`up` comes from Prometheus itself);
  - each label a selector matches on is a label of that metric, and each `=` value (and
    each `=~` regex without a Grafana variable) matches a value the scrape has;
  - each label of a `by (...)` / `without (...)` clause is a label of a metric of the
    expression, or one the scrape adds (instance, job, namespace, pod).

    deploy/monitoring/check_series.py BIN CERT KEY   (usually run by check.sh)
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
IP = "127.0.15.1"
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r'\b(sippool_[A-Za-z0-9_]+|up)\b\s*(\{([^}]*)\})?')
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r'\b(?:by|without)\s*\(([^)]*)\)')


def expressions():
    """(where, expression) of every rule and every dashboard query."""
    out = []
    with open(os.path.join(HERE, "sippool.rules.yml")) as f:
        for g in yaml.safe_load(f)["groups"]:
            for r in g["rules"]:
                out.append((f"rule {r.get('alert') or r.get('record')}", r["expr"]))
    with open(os.path.join(HERE, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel '{p['title']}' {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable ${v['name']}", query))
    return out


def scrape_sippool(binary, cert, key):
    """The Prometheus text of a running sippool after a little traffic."""
    work = tempfile.mkdtemp(prefix="sippool-monitoring.")
    config = os.path.join(work, "sippool.toml")
    with open(config, "w") as f:
        f.write(f"""[instance]
name = "monitoring-check"
[[listen]]
transport = "udp"
address = "{IP}:0"
[[listen]]
transport = "tcp"
address = "{IP}:0"
[[listen]]
transport = "tls"
address = "{IP}:0"
[[pair]]
name = "site"
primary = "127.0.15.2:9"
backup = "127.0.15.3:9"
[health]
oos_check = 1
[tls]
cert = "{cert}"
key = "{key}"
[http]
address = "{IP}:0"
[runtime]
drain_timeout_s = 1
""")
    log_path = os.path.join(work, "sippool.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([binary, "run", "--config", config], stdout=log, stderr=log,
                            env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"))
    try:
        line = ""
        for _ in range(100):
            with open(log_path) as f:
                line = next((l for l in f if "proxy_initialised" in l), "")
            if line or proc.poll() is not None:
                break
            time.sleep(0.1)
        m = re.search(r"http=Some\(([\d.]+:\d+)\).*listeners=\[(.*)\]", line)
        if not m:
            sys.exit(f"sippool did not start; its log:\n{open(log_path).read()}")
        http = m.group(1)
        listeners = dict((t.lower(), a) for t, a in
                         re.findall(r"\((\w+), ([\d.]+:\d+)\)", m.group(2)))
        traffic(listeners)
        # A probe of each server has timed out: the pair is out of service (the families
        # of probes and pair states are all there).
        time.sleep(1.5)
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
            return r.read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)


def request(method, transport, local, proxy, n):
    return (f"{method} sip:bob@site.example SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bKmon{method}{n}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:check@{local[0]}>;tag=mon{n}\r\n"
            "To: <sip:bob@site.example>\r\n"
            f"Call-ID: monitoring-check-{method}-{n}@{local[0]}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:check@{local[0]}:{local[1]};transport={transport.lower()}>\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def traffic(listeners):
    """An OPTIONS over TCP and an INVITE over UDP, each answered (503: the pair's servers
    do not answer)."""
    host, port = listeners["tcp"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request("OPTIONS", "TCP", s.getsockname(), listeners["tcp"], 1))
        s.recv(4096)
    host, port = listeners["udp"].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((IP, 0))
        u.settimeout(5)
        u.sendto(request("INVITE", "UDP", u.getsockname(), listeners["udp"], 2),
                 (host, int(port)))
        while True:
            reply, _ = u.recvfrom(65535)
            status = reply.split(b" ", 2)[1]
            if not status.startswith(b"1"):
                break


def exported(text):
    """{sample name: {label: {values}}} of a Prometheus text scrape."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s', line)
        if not m:
            continue
        labels = series.setdefault(m.group(1), {})
        for name, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                      m.group(3) or ""):
            labels.setdefault(name, set()).add(value)
    return series


def problems(expr, series):
    strings = [m.span() for m in STRING.finditer(expr)]
    inside = lambda i: any(a <= i < b for a, b in strings)
    found, out = [], []
    for m in SELECTOR.finditer(expr):
        if inside(m.start()):
            continue
        name, matchers = m.group(1), m.group(3) or ""
        found.append(name)
        if name == "up":
            continue
        if name not in series:
            out.append(f"{name}: sippool exports no such series")
            continue
        for label, op, value in MATCHER.findall(matchers):
            values = series[name].get(label)
            if values is None and label not in TARGET_LABELS:
                out.append(f"{name}: has no label {label}")
            elif values is None or "$" in value or op in ("!=", "!~"):
                continue
            elif op == "=" and value not in values:
                out.append(f'{name}: {label}="{value}" matches none of {sorted(values)}')
            elif op == "=~" and not any(re.fullmatch(value, v) for v in values):
                out.append(f'{name}: {label}=~"{value}" matches none of {sorted(values)}')
    if not found:
        out.append("queries no sippool series")
    known = set(TARGET_LABELS) | {l for n in found for l in series.get(n, {})}
    for m in GROUPING.finditer(expr):
        for label in filter(None, (l.strip() for l in m.group(1).split(","))):
            if label not in known:
                out.append(f"groups by {label}, a label of none of {sorted(set(found))}")
    return found, out


def main():
    binary, cert, key = sys.argv[1:4]
    series = exported(scrape_sippool(binary, cert, key))
    failed = 0
    used = set()
    exprs = expressions()
    for where, expr in exprs:
        found, bad = problems(expr, series)
        used.update(found)
        for b in dict.fromkeys(bad):
            print(f"{where}: {b}\n    {' '.join(expr.split())}")
            failed += 1
    print(f"series check: {len(exprs)} expressions, {len(used)} series "
          f"({', '.join(sorted(used))}), {failed} problems")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

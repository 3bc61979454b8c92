#!/usr/bin/env python3
"""Prints deploy/k8s/prometheusrule.yaml: the alert rules of sippool.rules.yml as a
PrometheusRule for the Prometheus Operator. The rules file is the one to edit; then

    python3 deploy/monitoring/prometheusrule.py > deploy/k8s/prometheusrule.yaml

deploy/monitoring/check.sh fails while the two differ."""
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


class Literal(str):
    """A multi-line string, written as a YAML block scalar."""


yaml.SafeDumper.add_representer(
    Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))


def blocks(node):
    if isinstance(node, dict):
        return {k: blocks(v) for k, v in node.items()}
    if isinstance(node, list):
        return [blocks(v) for v in node]
    if isinstance(node, str) and "\n" in node:
        return Literal(node)
    return node


def main():
    with open(os.path.join(HERE, "sippool.rules.yml")) as f:
        rules = yaml.safe_load(f)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sippool",
            # The Prometheus resource's ruleSelector must match these labels (with
            # kube-prometheus-stack, add `release: <its release name>`).
            "labels": {"app.kubernetes.io/name": "sippool"},
        },
        "spec": blocks(rules),
    }
    sys.stdout.write(
        "# Generated from deploy/monitoring/sippool.rules.yml by\n"
        "# deploy/monitoring/prometheusrule.py: edit the rules file, not this one.\n"
        "# For the Prometheus Operator; its Prometheus must select this rule by its labels.\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=10000, allow_unicode=True))


if __name__ == "__main__":
    main()

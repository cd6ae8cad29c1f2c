"""Shared helpers for the proxy tests: synthetic clusters, normalisation, loading into a kernel."""

from __future__ import annotations

import re
from pathlib import Path

from dataplane.k8s.synthetic import synthetic_cluster
from dataplane.k8s.objects import Cluster
from dataplane.proxy.iptables.generator import GeneratorOptions, generate
from dataplane.proxy.iptables.ruleset import RuleSet
from dataplane.proxy.model import NodeContext, build_state

DATA = Path(__file__).parent / "data"


def upstream_context(**kw: object) -> NodeContext:
    """The fake proxier of kube-proxy's proxier_test.go: node test-node, 192.168.0.2, 10.0.0.0/8."""
    args: dict[str, object] = {"node_name": "test-node", "node_ips": ("192.168.0.2",),
                               "cluster_cidrs": ("10.0.0.0/8",)}
    args.update(kw)
    return NodeContext(**args)  # type: ignore[arg-type]


def rules_for(cluster: Cluster, context: NodeContext | None = None, **options: object) -> RuleSet:
    return generate(build_state(cluster, context or upstream_context()), GeneratorOptions(**options))  # type: ignore[arg-type]


def normalise(text: str) -> dict[str, tuple[frozenset[str], dict[str, list[str]]]]:
    """Per table: the chain declarations (a set) and each chain's rules in order. This is how
    kube-proxy's own tests compare dumps (the order of chains and of services is a Go map's)."""
    tables: dict[str, tuple[set[str], dict[str, list[str]]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = line[1:]
            tables[current] = (set(), {})
        elif line.startswith(":"):
            tables[current][0].add(line.split()[0][1:])  # type: ignore[index]
        else:
            chain = line.split()[1]
            tables[current][1].setdefault(chain, []).append(line)  # type: ignore[index]
    return {t: (frozenset(c), r) for t, (c, r) in tables.items()}


def synthetic(n_services: int, n_endpoints: int, **kw: object) -> Cluster:
    """kube-proxy's generateServiceEndpoints (number_generated_rules_test.go), as objects."""
    return synthetic_cluster(n_services, n_endpoints, **kw)


def jump_targets_declared(text: str) -> list[str]:
    """Problems: jumps to chains the text neither declares nor are built-in targets."""
    builtin = {"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG"}
    problems = []
    for table, (chains, rules) in normalise(text).items():
        for chain, lines in rules.items():
            if chain not in chains and chain not in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"):
                problems.append(f"{table}: rules for undeclared chain {chain}")
            for line in lines:
                m = re.search(r" -j (\S+)", line)
                if m and m.group(1) not in builtin and m.group(1) not in chains:
                    problems.append(f"{table}: {line!r} jumps to undeclared {m.group(1)}")
    return problems


def load_into(netns, text: str, tool: str) -> str:  # type: ignore[no-untyped-def]
    """Run the real iptables-restore inside `netns`; returns stderr ('' on success)."""
    res = netns.run([tool], input=text, check=False, timeout=600)
    return "" if res.returncode == 0 else (res.stderr or res.stdout or f"exit {res.returncode}")


def saved(netns, tool: str, table: str) -> str:  # type: ignore[no-untyped-def]
    return netns.run([tool, "-t", table], timeout=600).stdout


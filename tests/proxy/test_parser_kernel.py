"""The parser against the real iptables-save (legacy and nft backends), in scratch namespaces.

A varied rule file (restore input in non-canonical spellings) is loaded with iptables-restore;
iptables-save's output must parse and render back byte for byte, and our canonical form of the
input must equal what the kernel's tool prints, rule by rule.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dataplane.proxy.iptables.parser import parse
from dataplane.proxy.iptables.rules import StatisticMatch
from dataplane.proxy.iptables.sample import kube_proxy_dump

DATA = Path(__file__).parent / "data"
BACKENDS = [pytest.param("legacy", marks=pytest.mark.requires("root", "netns", "iptables-legacy", "ipset"), id="legacy"),
            pytest.param("nft", marks=pytest.mark.requires("root", "netns", "iptables-nft", "ipset"), id="nft")]
SETS = (("KUBE-CLUSTER-IP", "hash:ip,port"), ("KUBE-LB", "hash:ip"))


def restore_and_save(netns, backend: str, text: str, family: int = 4) -> str:  # type: ignore[no-untyped-def]
    prog = "ip6tables" if family == 6 else "iptables"
    res = netns.run([f"{prog}-{backend}-restore"], input=text, check=False)
    assert res.returncode == 0, res.stderr
    return netns.run([f"{prog}-{backend}-save"]).stdout


def with_sets(netns) -> None:  # type: ignore[no-untyped-def]
    for name, kind in SETS:
        netns.run(["ipset", "create", name, kind])


def chains_of(text: str, family: int = 4) -> dict[tuple[str, str], list[str]]:
    rs = parse(text, family=family)
    return {(t.name, c.name): [r.render() for r in c.rules] for t in rs.tables.values() for c in t.chains.values()}


def varied() -> str:
    return (DATA / "varied-restore.txt").read_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_save_output_round_trips(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    with_sets(netns)
    saved = restore_and_save(netns, backend, varied())
    assert saved.count("\n-A ") > 90
    assert parse(saved).render() == saved
    # our canonical form of the input is the kernel's, rule by rule
    ours, kernel = chains_of(varied()), chains_of(saved)
    if backend == "nft":
        # iptables-nft folds two `-m tcp` of one rule into one: the only known difference
        folded = "-A PREROUTING -p tcp -m tcp --dport 80 -m tcp --sport 5 -j ACCEPT"
        ours[("raw", "PREROUTING")] = [r if r != folded else
                                       "-A PREROUTING -p tcp -m tcp --sport 5 --dport 80 -j ACCEPT"
                                       for r in ours[("raw", "PREROUTING")]]
    for key, rules in kernel.items():
        assert ours.get(key, []) == rules, key
    for table in ("filter", "nat", "mangle", "raw"):
        netns.run([f"iptables-{backend}", "-t", table, "-F"])  # release the sets before the namespace goes


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_ipv6_save_output_round_trips(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    text = (DATA / "varied-restore6.txt").read_text()
    saved = restore_and_save(netns, backend, text, family=6)
    assert parse(saved, family=6).render() == saved
    assert chains_of(text, 6) == {k: v for k, v in chains_of(saved, 6).items() if k in chains_of(text, 6)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_kube_proxy_shaped_dumps(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    example = (DATA / "kube-proxy-1.11.txt").read_text()
    saved = restore_and_save(netns, backend, example)
    assert parse(saved).render() == saved
    assert chains_of(example) == {k: v for k, v in chains_of(saved).items() if k in chains_of(example)}
    sample = kube_proxy_dump(40, 5)
    saved = restore_and_save(netns, backend, sample)
    body = [line for line in saved.splitlines() if not line.startswith("#")]
    assert body == [line for line in sample.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistic_quantisation_matches_the_kernel(netns, backend: str) -> None:  # type: ignore[no-untyped-def]
    """Our lround(p * 2^31) gives the value iptables-save prints back for kube-proxy's probabilities."""
    probs = [f"{1.0 / n:.10f}" for n in range(2, 60)] + ["0.3333333333", "1e-10", "0.99999999999", "0.123456789012",
                                                        "0", "1", "0.5000000001", "0.00000000023283064365"]
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n"
            + "".join(f"-A PREROUTING -m statistic --mode random --probability {p} -j X\n" for p in probs)
            + "COMMIT\n")
    saved = restore_and_save(netns, backend, text)
    ours = [r.matches[0] for r in parse(text).tables["nat"].chains["PREROUTING"].rules]
    kernel = [r.matches[0] for r in parse(saved).tables["nat"].chains["PREROUTING"].rules]
    assert all(isinstance(m, StatisticMatch) for m in ours)
    assert [m.probability for m in ours] == [m.probability for m in kernel]
    assert [m.probability for m in ours] == [math.floor(float(p) * 2**31 + 0.5) for p in probs]

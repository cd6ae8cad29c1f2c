"""The numba service table agrees with a dict, and its rr decision with the Python rr scheduler."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import numpy as np
import pytest

from dataplane.proxy.ipvs.lookup import ServiceIndex, probe_lengths
from dataplane.proxy.ipvs.sched.base import Flow
from dataplane.proxy.ipvs.service import VirtualService


def random_keys(n: int, seed: int) -> list[tuple[int, IPv4Address | IPv6Address, int]]:
    rng = np.random.default_rng(seed)
    keys: set[tuple[int, IPv4Address | IPv6Address, int]] = set()
    while len(keys) < n:
        proto = int(rng.choice([6, 17, 132]))
        port = int(rng.integers(0, 65536))
        if rng.random() < 0.2:
            addr: IPv4Address | IPv6Address = IPv6Address(int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)))
        else:
            addr = IPv4Address(int(rng.integers(0, 2**32)))
        keys.add((proto, addr, port))
    return sorted(keys, key=str)


def test_lookup_agrees_with_a_dict_for_hits_and_misses() -> None:
    keys = random_keys(5000, 1)
    index = ServiceIndex(keys)
    truth = {k: i for i, k in enumerate(keys)}
    probes = keys[::7] + random_keys(3000, 2)
    # near misses: same address, other port / protocol / family
    probes += [(6, ip_address("10.96.0.1"), 443), (17, keys[0][1], keys[0][2]), (keys[0][0], keys[0][1], (keys[0][2] + 1) % 65536)]
    got = index.lookup_many(probes)
    assert list(got) == [truth.get(k, -1) for k in probes]
    assert probe_lengths(index.table, index.queries(keys)) < 1.3  # load factor <= 1/4: (1 + 1/(1-a))/2 = 1.17


def test_duplicates_and_bad_counts_are_refused() -> None:
    k = (6, ip_address("10.96.0.1"), 443)
    with pytest.raises(ValueError, match="duplicate"):
        ServiceIndex([k, k])
    with pytest.raises(ValueError, match="one count in 0..65535"):
        ServiceIndex([k], [1, 2])
    with pytest.raises(ValueError, match="one count in 0..65535"):
        ServiceIndex([k], [70000])


def test_decide_batch_matches_the_rr_scheduler() -> None:
    """With weight-1 real servers, ip_vs_rr_schedule() is a rotation in list order starting at the
    first; the compiled decision must give the same sequence per service, interleaved."""
    keys = [(6, ip_address(f"10.96.0.{i}"), 80) for i in range(1, 4)]
    counts = [3, 1, 0]
    index = ServiceIndex(keys, counts)
    services = []
    for (proto, addr, port), n in zip(keys, counts):
        svc = VirtualService(proto, addr, port, "rr")
        for j in range(n, 0, -1):
            svc.add_dest(f"10.244.0.{j}", 8080)
        services.append(svc)
    order = [0, 1, 0, 2, 0, 0, 1, 0]
    got_svc, got_pos = index.decide(index.queries([keys[i] for i in order]))
    expected = []
    for i in order:
        svc = services[i]
        d = svc.scheduler.schedule(svc, Flow(ip_address("10.0.0.1"), svc.addr, 1, 80))
        expected.append(-1 if d is None else svc.destinations.index(d))
    assert list(got_svc) == order and list(got_pos) == expected
    assert [list(a) for a in index.decide(index.queries([(6, ip_address("10.96.0.9"), 80)]))] == [[-1], [-1]]


def test_probing_stays_correct_in_a_crowded_table() -> None:
    """The same build and probe code at load factor 0.49 (long runs, wrap-around at the table end):
    every key found, every absent key reported absent."""
    from dataplane.proxy.ipvs.lookup import _aligned_rows, _build, lookup_batch

    keys = random_keys(2000, 3)
    table = _aligned_rows(4096)
    assert _build(ServiceIndex.queries(keys), np.zeros(len(keys), dtype=np.int64), table)
    probes = keys + random_keys(2000, 4)
    out = np.empty(len(probes), dtype=np.int64)
    lookup_batch(table, ServiceIndex.queries(probes), out)
    truth = {k: i for i, k in enumerate(keys)}
    assert list(out) == [truth.get(k, -1) for k in probes]
    assert probe_lengths(table, ServiceIndex.queries(keys)) > 1.3  # really crowded

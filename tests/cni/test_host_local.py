"""host-local IPAM: allocation, the on-disk store, requested IPs, DEL/CHECK/GC.

Run in-process through `dispatch` (host-local never touches a namespace) and, where a
reference exists, compared with the Go plugin on the same store.
"""

from __future__ import annotations

import os
import stat

import pytest

from cni_plugin_helpers import GO_DIR, VERSIONS, requires_go
from dataplane.cni import testing as cni_testing
from dataplane.cni.plugins.host_local import PLUGIN
from dataplane.cni.spec import versions


def conf(data_dir, ranges=None, version="1.0.0", name="hlnet", **ipam) -> dict:
    body = {"type": "host-local", "dataDir": str(data_dir),
            "ranges": ranges if ranges is not None else [[{"subnet": "10.30.0.0/24"}]]}
    body.update(ipam)
    return {"cniVersion": version, "name": name, "type": "bridge", "ipam": body}


def run(command, c, cid="ctr1", ifname="eth0", args="", go=False):
    environ = cni_testing.env(command, container_id=cid, netns="/var/run/netns/x", ifname=ifname,
                              path=GO_DIR, args=args)
    if go:
        return cni_testing.run_binary(os.path.join(GO_DIR, "host-local"), environ, c)
    return cni_testing.run_inprocess(PLUGIN, environ, c)


def ips(outcome) -> list[str]:
    assert outcome.code == 0, outcome
    return [ip["address"] for ip in outcome.json["ips"]]


def files(data_dir, name="hlnet") -> dict[str, str]:
    return cni_testing.store_files(os.path.join(str(data_dir), name))


def test_first_allocation_and_store_format(tmp_path):
    c = conf(tmp_path, routes=[{"dst": "0.0.0.0/0"}])
    out = run("ADD", c)
    assert out.json == {"cniVersion": "1.0.0", "ips": [{"address": "10.30.0.2/24", "gateway": "10.30.0.1"}],
                        "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    assert files(tmp_path) == {"10.30.0.2": "ctr1\r\neth0", "last_reserved_ip.0": "10.30.0.2", "lock": ""}
    assert stat.S_IMODE(os.stat(tmp_path / "hlnet" / "10.30.0.2").st_mode) == 0o644


@pytest.mark.parametrize("version", VERSIONS)
def test_ipam_result_in_every_version(tmp_path, version):
    c = conf(tmp_path, [[{"subnet": "10.30.0.0/24"}], [{"subnet": "fd30::/64"}]], version=version)
    result = run("ADD", c).json
    assert result["cniVersion"] == version
    expected = [{"address": "10.30.0.2/24", "gateway": "10.30.0.1"}, {"address": "fd30::2/64", "gateway": "fd30::1"}]
    if not versions.is_1x(version):
        expected = [{"version": "4", **expected[0]}, {"version": "6", **expected[1]}]
    assert result["ips"] == expected


def test_round_robin_does_not_reuse_a_freed_ip_at_once(tmp_path):
    c = conf(tmp_path)
    assert ips(run("ADD", c, "a")) == ["10.30.0.2/24"]
    assert ips(run("ADD", c, "b")) == ["10.30.0.3/24"]
    assert run("DEL", c, "a").code == 0
    assert ips(run("ADD", c, "c")) == ["10.30.0.4/24"]


def test_walk_wraps_over_ranges_skips_gateway_and_reports_exhaustion(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.30.0.0/30", "rangeStart": "10.30.0.1"},
                         {"subnet": "10.30.1.0/30", "gateway": "10.30.1.2"}]])
    # .0.1 is the first range's gateway, .1.2 the second's: two addresses in all
    assert [ips(run("ADD", c, f"c{i}"))[0] for i in range(2)] == ["10.30.0.2/30", "10.30.1.1/30"]
    full = run("ADD", c, "c9")
    assert full.code == 1
    assert full.json["msg"] == ("failed to allocate for range 0: no IP addresses available in range set: "
                                "10.30.0.1-10.30.0.2,10.30.1.1-10.30.1.2")


@requires_go
def test_store_is_continued_across_implementations(tmp_path):
    """Alternate Go and ours on one store; the sequence equals a Go-only run on another store."""
    ranges = [[{"subnet": "10.30.0.0/29"}], [{"subnet": "fd30::/125"}]]
    steps = [("ADD", "a"), ("ADD", "b"), ("DEL", "a"), ("ADD", "c"), ("ADD", "d"), ("ADD", "e"),
             ("DEL", "c"), ("ADD", "f"), ("ADD", "g"), ("ADD", "h")]
    mixed, pure = tmp_path / "mixed", tmp_path / "pure"
    seen = {"mixed": [], "pure": []}
    for i, (command, cid) in enumerate(steps):
        for label, data_dir, go in (("mixed", mixed, i % 2 == 0), ("pure", pure, True)):
            out = run(command, conf(data_dir, ranges), cid, go=go)
            seen[label].append((out.code, out.json and out.json.get("ips"), out.json and out.json.get("code")))
    assert seen["mixed"] == seen["pure"]
    assert files(mixed) == files(pure)


@pytest.mark.parametrize("how", ["cni_args", "args", "runtime"])
def test_requested_ip(tmp_path, how):
    c = conf(tmp_path)
    args = ""
    if how == "cni_args":
        args = "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.30.0.77"
    elif how == "args":
        c["args"] = {"cni": {"ips": ["10.30.0.77"]}}
    else:
        c["runtimeConfig"] = {"ips": ["10.30.0.77/24"]}
    assert ips(run("ADD", c, args=args)) == ["10.30.0.77/24"]
    taken = run("ADD", c, cid="other", args=args)
    assert taken.code == 1
    assert "requested IP address 10.30.0.77 is not available in range set 10.30.0.1-10.30.0.254" in taken.json["msg"]


def test_failed_request_rolls_back_everything_this_add_took(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.30.0.0/24"}], [{"subnet": "fd30::/64"}]])
    c["runtimeConfig"] = {"ips": ["fd30::1"]}       # the v6 gateway: refused after v4 was allocated
    out = run("ADD", c)
    assert out.code == 1 and "requested ip fd30::1 is subnet's gateway" in out.json["msg"]
    assert [n for n in files(tmp_path) if n[0].isdigit() or ":" in n] == []
    c["runtimeConfig"] = {"ips": ["10.99.0.5"]}      # outside every range set
    out = run("ADD", c)
    assert out.code == 1 and out.json["msg"] == "failed to allocate all requested IPs: 10.99.0.5"
    assert [n for n in files(tmp_path) if n[0].isdigit() or ":" in n] == []


def test_repeated_container_and_ifname_is_rejected(tmp_path):
    c = conf(tmp_path)
    assert run("ADD", c).code == 0
    again = run("ADD", c)
    assert again.code == 1
    assert again.json["msg"] == ("failed to allocate for range 0: 10.30.0.2 has been allocated to ctr1, "
                                 "duplicate allocation is not allowed")
    assert ips(run("ADD", c, ifname="eth1")) == ["10.30.0.3/24"]


def test_del_is_idempotent_and_check_follows_the_lease(tmp_path):
    c = conf(tmp_path, version="1.1.0")
    run("ADD", c)
    assert run("CHECK", c).code == 0
    assert run("DEL", c).code == 0 and run("DEL", c).code == 0
    out = run("CHECK", c)
    assert out.code == 1 and out.json["msg"] == "host-local: Failed to find address added by container ctr1"
    assert files(tmp_path) == {"last_reserved_ip.0": "10.30.0.2", "lock": ""}


def test_del_releases_legacy_id_only_files(tmp_path):
    c = conf(tmp_path)
    run("ADD", c, "x")
    (tmp_path / "hlnet" / "10.30.0.9").write_text("ctr1")
    assert run("DEL", c).code == 0
    assert "10.30.0.9" not in files(tmp_path) and "10.30.0.2" in files(tmp_path)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_what_is_not_valid(tmp_path, key):
    c = conf(tmp_path, [[{"subnet": "10.30.0.0/24"}], [{"subnet": "fd30::/64"}]], version="1.1.0")
    for cid in ("keep", "drop1", "drop2"):
        assert run("ADD", c, cid).code == 0
    gc = dict(c, **{key: [{"containerID": "keep", "ifname": "eth0"}]})
    out = cni_testing.run_inprocess(PLUGIN, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, gc)
    assert (out.code, out.stdout) == (0, b"")
    assert files(tmp_path) == {"10.30.0.2": "keep\r\neth0", "fd30::2": "keep\r\neth0",
                               "last_reserved_ip.0": "10.30.0.4", "last_reserved_ip.1": "fd30::4", "lock": ""}


def test_resolv_conf_becomes_dns(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nnameserver 10.96.0.10\nnameserver 10.96.0.11\nsearch a.svc b.svc\n"
                      "domain cluster.local\noptions ndots:5\n")
    out = run("ADD", conf(tmp_path, resolvConf=str(resolv)))
    assert out.json["dns"] == {"nameservers": ["10.96.0.10", "10.96.0.11"], "domain": "cluster.local",
                               "search": ["a.svc", "b.svc"], "options": ["ndots:5"]}


def test_legacy_single_range_and_runtime_ip_ranges(tmp_path):
    c = conf(tmp_path, ranges=[], subnet="10.31.0.0/24", rangeStart="10.31.0.50")
    c["runtimeConfig"] = {"ipRanges": [[{"subnet": "10.32.0.0/24"}]]}
    assert ips(run("ADD", c)) == ["10.32.0.2/24", "10.31.0.50/24"]


@requires_go
@pytest.mark.parametrize("ranges", [
    [[{"subnet": "10.30.0.0/31"}]],
    [[{"subnet": "10.30.0.0/32"}]],
    [[{"subnet": "fd30::/127"}]],
    [[{"subnet": "10.30.0.0/24"}], [{"subnet": "10.30.0.128/25"}]],
    [[{"subnet": "10.30.0.0/24"}, {"subnet": "10.30.0.0/25"}]],
    [[{"subnet": "10.30.0.0/24"}, {"subnet": "fd30::/64"}]],
    [[{"subnet": "10.30.0.5/24"}]],
    [[{"subnet": "10.30.0.0/24", "rangeStart": "10.31.0.1"}]],
    [[{"subnet": "10.30.0.0/24", "rangeEnd": "10.30.1.1"}]],
    [[{"subnet": "not-a-cidr"}]],
    [],
])
def test_invalid_ranges_fail_like_the_reference(tmp_path, ranges):
    ours = run("ADD", conf(tmp_path / "o", ranges))
    go = run("ADD", conf(tmp_path / "g", ranges), go=True)
    assert ours.code == go.code == 1
    assert ours.json["code"] == go.json["code"] == 999
    if "too small" in go.json["msg"] or "overlap" in go.json["msg"] or "no IP ranges" in go.json["msg"]:
        assert ours.json["msg"] == go.json["msg"]
    assert not os.path.exists(tmp_path / "o" / "hlnet" / "10.30.0.2")


# -- the allocator against a model of the reference's round-robin walk ----------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from dataplane.cni.ipam.host_local.allocator import Allocator  # noqa: E402
from dataplane.cni.ipam.host_local.ranges import RangeSet  # noqa: E402
from dataplane.cni.ipam.host_local.store import DiskStore  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(26, 29), start=st.integers(1, 6), span=st.integers(0, 40),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 9)), min_size=1, max_size=40))
def test_allocator_matches_a_round_robin_model(tmp_path_factory, prefix, start, span, ops):
    """Never the network, broadcast or gateway; never twice; always the next free after the last."""
    import ipaddress

    net = ipaddress.ip_network(f"10.77.0.0/{prefix}")
    last_host = net.num_addresses - 2
    lo, hi = min(start, last_host), min(start + span, last_host)
    range_set = RangeSet.parse([{"subnet": str(net), "rangeStart": str(net[lo]), "rangeEnd": str(net[hi])}])
    store = DiskStore("prop", str(tmp_path_factory.mktemp("prop")))
    pool = [net[i] for i in range(lo, hi + 1) if net[i] != net[1]]          # .1 is the gateway
    held: dict[int, ipaddress.IPv4Address] = {}
    cursor = None                                                            # last reserved
    for add, who in ops:
        if add and who not in held:
            with store.locked():
                try:
                    got = Allocator(range_set, store, 0).get(f"c{who}", "eth0", None).address.ip
                except Exception as exc:  # noqa: BLE001
                    assert "no IP addresses available" in str(exc) and len(held) == len(pool)
                    continue
            free = [ip for ip in pool if ip not in held.values()]
            after = [ip for ip in free if cursor is not None and ip > cursor]
            assert got == (after or free)[0]
            held[who], cursor = got, got
        elif not add and who in held:
            with store.locked():
                store.release_by_id(f"c{who}", "eth0")
            del held[who]
    assert {ip for ip, _c, _i in store.leases()} == set(held.values())

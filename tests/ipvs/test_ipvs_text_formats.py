"""ipvsadm-save -n and ipset save text: generated, parsed, and (ipset) checked against the kernel."""

from __future__ import annotations

import pytest

from dataplane.proxy.ipvs import ipset, ipvsadm
from dataplane.proxy.ipvs.sched.base import SVC_F_SCHED2
from dataplane.proxy.ipvs.service import ServiceTable
from dataplane.testing.sandbox import Sandbox

# ipvsadm.c print_service_entry() FMT_RULE form; real servers newest first (list_add_rcu).
DUMP = """\
-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 192.168.100.3:6443 -m -w 1
-a -t 10.96.0.1:443 -r 192.168.100.2:6443 -m -w 1
-A -u 10.96.0.10:53 -s rr -p 10800
-a -u 10.96.0.10:53 -r 10.244.1.4:53 -m -w 1
-A --sctp-service 10.96.0.20:9000 -s sh -b sh-port
-a --sctp-service 10.96.0.20:9000 -r 10.244.2.8:9000 -m -w 0
-A -t [fd00:10:96::1]:80 -s mh -p 60 -M 64 -b mh-fallback,mh-port
-a -t [fd00:10:96::1]:80 -r [fd00:10:244:1::5]:8080 -m -w 2
-A -t 192.168.100.2:30080 -s wrr -p 300 -M 255.255.255.0
-a -t 192.168.100.2:30080 -r 10.244.1.5:8080 -g -w 3
"""


def test_generate_exact_text() -> None:
    table = ServiceTable()
    svc = table.add_service("tcp", "10.96.0.1", 443)
    svc.add_dest("192.168.100.2", 6443)
    svc.add_dest("192.168.100.3", 6443)  # newest: listed first
    table.add_service("udp", "10.96.0.10", 53, persistent=10800).add_dest("10.244.1.4", 53)
    table.add_service("sctp", "10.96.0.20", 9000, "sh", flags=SVC_F_SCHED2).add_dest("10.244.2.8", 9000, 0)
    v6 = table.add_service("tcp", "fd00:10:96::1", 80, "mh", persistent=60, netmask=64, flags=0x18)
    v6.add_dest("fd00:10:244:1::5", 8080, 2, u_threshold=100, l_threshold=50)  # thresholds: not saved
    table.add_service("tcp", "192.168.100.2", 30080, "wrr", persistent=300, netmask=24).add_dest(
        "10.244.1.5", 8080, 3, fwd="g")
    assert ipvsadm.save(table) == DUMP


def test_parse_then_save_round_trips_and_keeps_list_order() -> None:
    table = ipvsadm.load(DUMP)
    assert ipvsadm.save(table) == DUMP
    api = table.get("tcp", "10.96.0.1", 443)
    assert [str(d.addr) for d in api.destinations] == ["192.168.100.3", "192.168.100.2"]
    v6 = table.get("tcp", "fd00:10:96::1", 80)
    assert (v6.timeout, v6.netmask, v6.scheduler_name, v6.flags) == (60, 64, "mh", 0x19)
    nodeport = table.get("tcp", "192.168.100.2", 30080)
    assert nodeport.netmask == 24 and nodeport.destinations[0].fwd == "g"


def test_ipvsadm_list_format() -> None:
    """ipvsadm -Ln: "%-4s %s" + " %s" scheduler, flags, " persistent %u"; dests "  -> %-28s %-7s %-6d %-10u %-10u"."""
    table = ipvsadm.load(DUMP)
    dns = table.get("udp", "10.96.0.10", 53)
    dns.destinations[0].inactconns = 3
    text = ipvsadm.list_text([table.get("tcp", "10.96.0.1", 443), dns, table.get("tcp", "fd00:10:96::1", 80)])
    pad = " " * 10  # %-10u of a one-digit number: 9 spaces, then the separating space
    assert text.splitlines() == [
        "IP Virtual Server version 1.2.1 (size=4096)",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        "TCP  10.96.0.1:443 rr",
        "  -> 192.168.100.3:6443" + " " * 10 + " Masq   " + " 1     " + " 0" + pad + "0" + " " * 9,
        "  -> 192.168.100.2:6443" + " " * 10 + " Masq   " + " 1     " + " 0" + pad + "0" + " " * 9,
        "UDP  10.96.0.10:53 rr persistent 10800",
        "  -> 10.244.1.4:53" + " " * 15 + " Masq   " + " 1     " + " 0" + pad + "3" + " " * 9,
        "TCP  [fd00:10:96::1]:80 mh (mh-fallback,mh-port) persistent 60 mask 64",
        "  -> [fd00:10:244:1::5]:8080" + " " * 5 + " Masq   " + " 2     " + " 0" + pad + "0" + " " * 9,
    ]


def test_parse_long_options_and_defaults() -> None:
    text = ("--add-service --tcp-service 10.96.0.5:80 --scheduler lc --persistent\n"
            "--add-server --tcp-service 10.96.0.5:80 --real-server 10.244.0.5 --masquerading --weight 4 -x 9 -y 5\n")
    svc = ipvsadm.load(text).get("tcp", "10.96.0.5", 80)
    assert (svc.destinations[0].u_threshold, svc.destinations[0].l_threshold) == (9, 5)
    assert svc.scheduler_name == "lc" and svc.timeout == 300  # -p without a value: 300 s
    assert svc.destinations[0].port == 80 and svc.destinations[0].weight == 4  # RS port defaults to VIP port


@pytest.mark.parametrize("text, reason", [
    ("-A -t 10.96.0.1 -s rr\n", "missing port"),
    ("-A -t 10.96.0.1:80 -s nosuch\n", "unknown IPVS scheduler"),
    ("-A -t 10.96.0.1:80 -s rr\n-a -t 10.96.0.2:80 -r 10.0.0.1:80 -m -w 1\n", "line 2: .*not defined above"),
    ("-A -t fd00::1:80 -s rr\n", "brackets"),
    ("-A -t 10.96.0.1:80 -s rr\n-a -t 10.96.0.1:80 -r 10.0.0.1:80 -m -w -1\n", "non-negative"),
    ("-A -f 7 -s rr\n", "firewall-mark"),
    ("-A -t 10.96.0.1:80 -s rr -M 255.0.255.0 -p 5\n", "not contiguous"),
])
def test_parse_errors_name_the_line(text: str, reason: str) -> None:
    with pytest.raises(ipvsadm.IpvsadmParseError, match=reason):
        ipvsadm.load(text)


CLUSTER_IP_COMMENT = "Kubernetes service cluster ip + port for masquerade purpose"


def kube_sets() -> list[ipset.IpSet]:
    cluster = ipset.IpSet("KUBE-CLUSTER-IP", "hash:ip,port", comment=True)
    cluster.add("10.96.0.1,tcp:443", CLUSTER_IP_COMMENT)
    cluster.add("10.96.0.10,UDP:53", CLUSTER_IP_COMMENT)
    cluster.add("10.96.0.20,sctp:9000", CLUSTER_IP_COMMENT)
    loop = ipset.IpSet("KUBE-LOOP-BACK", "hash:ip,port,ip", comment=True)
    loop.add("10.244.1.5,tcp:8080,10.244.1.5", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose")
    nodeports = ipset.IpSet("KUBE-NODE-PORT-TCP", "bitmap:port", comment=True)
    nodeports.add("30080", "Kubernetes nodeport TCP port for masquerade purpose")
    ranges = ipset.IpSet("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net", comment=True)
    ranges.add("192.0.2.10,tcp:80,198.51.100.0/24")
    v6 = ipset.IpSet("KUBE-6-CLUSTER-IP", "hash:ip,port", family="inet6", comment=True)
    v6.add("fd00:10:96:0:0::1,tcp:443", CLUSTER_IP_COMMENT)
    return [cluster, loop, nodeports, ranges, v6]


def test_ipset_generate_and_parse_round_trip() -> None:
    sets = kube_sets()
    text = ipset.save(sets)
    assert 'add KUBE-CLUSTER-IP 10.96.0.10,udp:53 comment "Kubernetes service' in text
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 comment\n" in text
    assert "add KUBE-6-CLUSTER-IP fd00:10:96::1,tcp:443" in text
    again = ipset.load(text)
    assert {n: s.members for n, s in again.items()} == {s.name: s.members for s in sets}
    assert "10.96.0.1,TCP:443" in again["KUBE-CLUSTER-IP"]


@pytest.mark.requires("root", "netns", "ipset")
def test_kernel_ipset_restore_accepts_ours_and_its_save_parses(sandbox: Sandbox) -> None:
    """Real `ipset restore` in a scratch namespace takes our text; the kernel's `ipset save`
    (with its bucketsize/initval extras and its own member order) parses back to the same sets."""
    ns = sandbox.netns("ipset")
    sets = kube_sets()
    ns.run(["ipset", "restore"], input=ipset.save(sets))
    dumped = ns.run(["ipset", "save"]).stdout
    assert "bucketsize" in dumped  # really the kernel's own text
    parsed = ipset.load(dumped)
    assert {n: s.members for n, s in parsed.items()} == {s.name: s.members for s in sets}
    assert parsed["KUBE-CLUSTER-IP"].comment and parsed["KUBE-CLUSTER-IP"].extra["bucketsize"] == "12"
    ns.run(["ipset", "destroy"])


@pytest.mark.parametrize("line, reason", [
    ("create S hash:mac\n", "not supported"),
    ("create S hash:ip,port family inet\nadd S 10.0.0.1,icmp:3\n", "line 2: .*protocol 'icmp'"),
    ("create S hash:ip,port family inet\nadd S fd00::1,tcp:80\n", "does not match family"),
    ("add S 10.0.0.1\n", "not created above"),
    ("create S bitmap:port range 1000-2000\nadd S 30080\n", "outside the set range"),
    ("create S hash:ip family inet\nadd S 10.0.0.1 comment \"x\"\n", "without the comment option"),
])
def test_ipset_errors(line: str, reason: str) -> None:
    with pytest.raises(ipset.IpsetError, match=reason):
        ipset.load(line)

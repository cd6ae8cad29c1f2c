"""Source NAT for a container's IPs: the reference's iptables layout (pkg/ip/ipmasq_linux.go).

Chain `CNI-<first 24 hex of sha512(net + containerID)>` in the nat table holds
`-d <subnet> -j ACCEPT` and `! -d <multicast> -j MASQUERADE`; POSTROUTING jumps to it for
`-s <container ip>`. Every rule carries the comment `name: "<net>" id: "<containerID>"`.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess

from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.types import IPInterface

MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def chain_name(network: str, container_id: str, prefix: str = "CNI-") -> str:
    """The reference's utils.FormatChainName (also MustFormatChainNameWithPrefix for DN-)."""
    return (prefix + hashlib.sha512((network + container_id).encode()).hexdigest())[:28]


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def iptables(version: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run iptables/ip6tables (Debian's default, i.e. iptables-nft) in the current namespace."""
    tool = "iptables" if version == 4 else "ip6tables"
    exe = tool_path(version)
    if exe is None:
        raise PluginError(f"{tool} is not installed")
    proc = subprocess.run([exe, "-w", *argv], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PluginError(f"running [{tool} -w {' '.join(argv)}]: exit status {proc.returncode}: "
                          f"{proc.stderr.strip()}")
    return proc


def tool_path(version: int) -> str | None:
    """iptables/ip6tables, found even when the runtime gave us no PATH."""
    tool = "iptables" if version == 4 else "ip6tables"
    return shutil.which(tool) or shutil.which(tool, path="/usr/local/sbin:/usr/sbin:/sbin")


def chain_exists(version: int, table: str, chain: str) -> bool:
    return iptables(version, "-t", table, "-S", chain, check=False).returncode == 0


def append_unique(version: int, table: str, chain: str, *rule: str) -> None:
    if iptables(version, "-t", table, "-C", chain, *rule, check=False).returncode != 0:
        iptables(version, "-t", table, "-A", chain, *rule)


def delete_rule(version: int, table: str, chain: str, *rule: str) -> None:
    """Delete a rule if present (missing rule or chain is fine)."""
    if iptables(version, "-t", table, "-C", chain, *rule, check=False).returncode == 0:
        iptables(version, "-t", table, "-D", chain, *rule)


def setup(address: IPInterface, chain: str, note: str) -> None:
    v = address.version
    if not chain_exists(v, "nat", chain):
        iptables(v, "-t", "nat", "-N", chain)
    append_unique(v, "nat", chain, "-d", str(address), "-j", "ACCEPT", "-m", "comment", "--comment", note)
    append_unique(v, "nat", chain, "!", "-d", MULTICAST[v], "-j", "MASQUERADE", "-m", "comment", "--comment", note)
    append_unique(v, "nat", "POSTROUTING", "-s", str(address.ip), "-j", chain, "-m", "comment", "--comment", note)


def teardown(address: IPInterface, chain: str, note: str) -> None:
    v = address.version
    delete_rule(v, "nat", "POSTROUTING", "-s", str(address.ip), "-j", chain, "-m", "comment", "--comment", note)
    delete_rule(v, "nat", "POSTROUTING", "-s", str(address), "-j", chain, "-m", "comment", "--comment", note)
    if chain_exists(v, "nat", chain):
        iptables(v, "-t", "nat", "-F", chain)
        iptables(v, "-t", "nat", "-X", chain)


_COMMENT = re.compile(r'^name: "(?P<net>.*)" id: "(?P<cid>.*)"$')


def stale_chains(version: int, network: str, keep: set[str]) -> list[tuple[list[str], str]]:
    """POSTROUTING jumps (rule args, chain) of `network` whose container ID is not in `keep`."""
    listing = iptables(version, "-t", "nat", "-S", "POSTROUTING", check=False)
    found = []
    for line in listing.stdout.splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", "POSTROUTING"] or "--comment" not in words or "-j" not in words:
            continue
        m = _COMMENT.match(words[words.index("--comment") + 1])
        target = words[words.index("-j") + 1]
        if m and m["net"] == network and m["cid"] not in keep and target == chain_name(network, m["cid"]):
            found.append((words[2:], target))
    return found


def remove_stale(network: str, keep: set[str]) -> list[str]:
    """Tear down the masquerade rules of every container of `network` not in `keep` (GC)."""
    removed = []
    for version in (4, 6):
        if tool_path(version) is None:
            continue
        for rule, chain in stale_chains(version, network, keep):
            iptables(version, "-t", "nat", "-D", "POSTROUTING", *rule)
            if chain_exists(version, "nat", chain):
                iptables(version, "-t", "nat", "-F", chain)
                iptables(version, "-t", "nat", "-X", chain)
            removed.append(chain)
    return removed

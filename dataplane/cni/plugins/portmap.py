"""The portmap plugin: hostPort -> container DNAT with the reference's iptables chains.

Layout (nat table, per family):
  PREROUTING/OUTPUT  -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT   (shared, never removed)
  CNI-HOSTPORT-DNAT  -m comment --comment 'dnat name: "<net>" id: "<cid>"' -m multiport -p <proto>
                     --destination-ports <ports> -j CNI-DN-<hash>        (one per <=15 ports)
  CNI-DN-<hash>      per mapping: hairpin mark (-s <container subnet>), localhost mark (v4),
                     then -j DNAT --to-destination <ip>:<port>
  CNI-HOSTPORT-SETMARK  -j MARK --set-xmark 0x2000/0x2000
  POSTROUTING (first) -j CNI-HOSTPORT-MASQ -> -m mark --mark 0x2000/0x2000 -j MASQUERADE
Chained only: it passes prevResult through unchanged. DEL removes only CNI-DN-<hash> and the
jumps to it.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field as dc_field
from typing import Any

from dataplane.cni.ip import ipmasq
from dataplane.cni.plugins._netconf import field
from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.skeleton import CmdArgs, PluginSpec
from dataplane.cni.spec.skeleton import main as _main
from dataplane.cni.spec.types import IPInterface, Result

TOP_DNAT = "CNI-HOSTPORT-DNAT"
SETMARK = "CNI-HOSTPORT-SETMARK"
MASQ = "CNI-HOSTPORT-MASQ"
DEFAULT_MARK_BIT = 13
MAX_MULTIPORT = 15


@dataclass
class PortMapping:
    host_port: int
    container_port: int
    protocol: str
    host_ip: str = ""


@dataclass
class PortMapConf:
    name: str
    snat: bool
    mark_bit: int
    external_setmark: str | None
    mappings: list[PortMapping]
    prev: Result | None
    cont_v4: IPInterface | None = None
    cont_v6: IPInterface | None = None
    conditions: dict[int, list[str]] = dc_field(default_factory=dict)

    @property
    def setmark_chain(self) -> str:
        return self.external_setmark or SETMARK

    @property
    def mark(self) -> str:
        value = 1 << self.mark_bit
        return f"{value:#x}/{value:#x}"


def load(args: CmdArgs) -> PortMapConf:
    conf = args.config
    snat = field(conf, "snat", bool, True)
    mark_bit = field(conf, "markMasqBit", int, None)
    external = field(conf, "externalSetMarkChain", str, None)
    if mark_bit is not None and external is not None:
        raise PluginError("Cannot specify externalSetMarkChain and markMasqBit")
    mark_bit = DEFAULT_MARK_BIT if mark_bit is None else mark_bit
    if not 0 <= mark_bit <= 31:
        raise PluginError("MasqMarkBit must be between 0 and 31")
    backend = field(conf, "backend", str, "") or "iptables"
    if backend != "iptables":
        raise PluginError(f'portmap backend "{backend}" is not supported (only "iptables")')
    conditions = {4: _conditions(conf, "conditionsV4"), 6: _conditions(conf, "conditionsV6")}
    mappings = []
    runtime = args.runtime_config()
    raw = runtime.get("portMappings") or []
    if not isinstance(raw, list):
        raise PluginError("failed to parse config: runtimeConfig.portMappings must be a list")
    for pm in raw:
        if not isinstance(pm, dict):
            raise PluginError("failed to parse config: portMappings entries must be objects")
        cport, hport = pm.get("containerPort", 0), pm.get("hostPort", 0)
        proto = pm.get("protocol", "") or "tcp"
        host_ip = pm.get("hostIP", "") or ""
        if not isinstance(cport, int) or isinstance(cport, bool) or cport <= 0 or cport > 65535:
            raise PluginError(f"Invalid container port number: {cport}")
        if not isinstance(hport, int) or isinstance(hport, bool) or hport <= 0 or hport > 65535:
            raise PluginError(f"Invalid host port number: {hport}")
        if not isinstance(proto, str) or proto.lower() not in ("tcp", "udp", "sctp"):
            raise PluginError(f"Invalid protocol: {proto}")
        if host_ip:
            try:
                ipaddress.ip_address(host_ip)
            except (ValueError, TypeError):
                raise PluginError(f"Invalid host IP: {host_ip}") from None
        mappings.append(PortMapping(hport, cport, proto.lower(), host_ip))
    prev = args.prev_result()
    pc = PortMapConf(conf["name"], snat, mark_bit, external, mappings, prev, conditions=conditions)
    if prev is not None:
        for ipc in prev.ips:
            if ipc.address.version == 4 and pc.cont_v4 is not None:
                continue
            if ipc.address.version == 6 and pc.cont_v6 is not None:
                continue
            if ipc.interface is not None and 0 <= ipc.interface < len(prev.interfaces):
                iface = prev.interfaces[ipc.interface]
                if iface.name != args.ifname or not iface.sandbox:
                    continue
            if ipc.address.version == 4:
                pc.cont_v4 = ipc.address
            else:
                pc.cont_v6 = ipc.address
    return pc


def _conditions(conf: dict, key: str) -> list[str]:
    value = field(conf, key, list, [])
    if not all(isinstance(v, str) for v in value):
        raise PluginError(f"{key} must be a list of strings")
    return list(value)


# -- chains -----------------------------------------------------------------------------------
@dataclass
class Chain:
    name: str
    rules: list[list[str]] = dc_field(default_factory=list)
    entry_chains: list[str] = dc_field(default_factory=list)
    entry_rules: list[list[str]] = dc_field(default_factory=list)
    prepend_entry: bool = False

    def setup(self, version: int) -> None:
        if not ipmasq.chain_exists(version, "nat", self.name):
            ipmasq.iptables(version, "-t", "nat", "-N", self.name)
        for rule in self.rules:
            _insert_unique(version, self.name, rule, prepend=False)
        for entry in self.entry_chains:
            for rule in self.entry_rules:
                _insert_unique(version, entry, [*rule, "-j", self.name], prepend=self.prepend_entry)

    def teardown(self, version: int) -> None:
        """Flush, remove every jump to it from the entry chains, delete; idempotent."""
        if ipmasq.chain_exists(version, "nat", self.name):
            ipmasq.iptables(version, "-t", "nat", "-F", self.name)
        for entry in self.entry_chains:
            listing = ipmasq.iptables(version, "-t", "nat", "-S", entry, check=False)
            if listing.returncode != 0:
                continue
            for line in listing.stdout.splitlines()[1:]:
                if line.endswith("-j " + self.name):
                    ipmasq.iptables(version, "-t", "nat", "-D", entry, *shlex.split(line)[2:])
        if ipmasq.chain_exists(version, "nat", self.name):
            ipmasq.iptables(version, "-t", "nat", "-X", self.name)

    def check(self, version: int) -> None:
        if not ipmasq.chain_exists(version, "nat", self.name):
            raise PluginError(f"chain {self.name} does not exist")
        for rule in self.rules:
            if ipmasq.iptables(version, "-t", "nat", "-C", self.name, *rule, check=False).returncode:
                raise PluginError(f"rule {' '.join(rule)} is missing from chain {self.name}")
        for entry in self.entry_chains:
            for rule in self.entry_rules:
                if ipmasq.iptables(version, "-t", "nat", "-C", entry, *rule, "-j", self.name,
                                   check=False).returncode:
                    raise PluginError(f"jump to {self.name} is missing from chain {entry}")


def _insert_unique(version: int, chain: str, rule: list[str], prepend: bool) -> None:
    if ipmasq.iptables(version, "-t", "nat", "-C", chain, *rule, check=False).returncode == 0:
        return
    if prepend:
        ipmasq.iptables(version, "-t", "nat", "-I", chain, "1", *rule)
    else:
        ipmasq.iptables(version, "-t", "nat", "-A", chain, *rule)


def toplevel_chain() -> Chain:
    return Chain(TOP_DNAT, entry_chains=["PREROUTING", "OUTPUT"],
                 entry_rules=[["-m", "addrtype", "--dst-type", "LOCAL"]])


def setmark_chain(pc: PortMapConf) -> Chain:
    return Chain(SETMARK, rules=[["-m", "comment", "--comment", "CNI portfwd masquerade mark",
                                  "-j", "MARK", "--set-xmark", pc.mark]])


def masq_chain(pc: PortMapConf) -> Chain:
    return Chain(MASQ, rules=[["-m", "mark", "--mark", pc.mark, "-j", "MASQUERADE"]],
                 entry_chains=["POSTROUTING"], prepend_entry=True,
                 entry_rules=[["-m", "comment", "--comment", "CNI portfwd requiring masquerade"]])


def dnat_chain(pc: PortMapConf, container_id: str, container: IPInterface | None) -> Chain:
    """The per-container chain; without a container address only its name matters (teardown)."""
    chain = Chain(ipmasq.chain_name(pc.name, container_id, "CNI-DN-"), entry_chains=[TOP_DNAT])
    if container is None:
        return chain
    version = container.version
    note = f'dnat name: "{pc.name}" id: "{container_id}"'[:256]
    by_proto: dict[str, list[int]] = {}
    for m in pc.mappings:
        by_proto.setdefault(m.protocol, []).append(m.host_port)
    for proto in sorted(by_proto):
        ports = [str(p) for p in by_proto[proto]]
        for i in range(0, len(ports), MAX_MULTIPORT):
            chain.entry_rules.append(["-m", "comment", "--comment", note, "-m", "multiport", "-p", proto,
                                      "--destination-ports", ",".join(ports[i:i + MAX_MULTIPORT]),
                                      *pc.conditions.get(version, [])])
    for m in pc.mappings:
        if m.host_ip and ipaddress.ip_address(m.host_ip).version != version:
            continue
        base = ["-p", m.protocol, "--dport", str(m.host_port)]
        if m.host_ip:
            base += ["-d", m.host_ip]
        if pc.snat:
            chain.rules.append([*base, "-s", str(container), "-j", pc.setmark_chain])
            if version == 4:
                chain.rules.append([*base, "-s", "127.0.0.1", "-j", pc.setmark_chain])
        target = f"{container.ip}:{m.container_port}" if version == 4 else f"[{container.ip}]:{m.container_port}"
        chain.rules.append([*base, "-j", "DNAT", "--to-destination", target])
    return chain


# -- commands ---------------------------------------------------------------------------------
def _forward(pc: PortMapConf, container_id: str, container: IPInterface) -> None:
    version = container.version
    if pc.snat:
        if pc.external_setmark is None:
            setmark_chain(pc).setup(version)
            masq_chain(pc).setup(version)
        if version == 4:
            _enable_route_localnet(container)
    toplevel_chain().setup(version)
    chain = dnat_chain(pc, container_id, container)
    chain.teardown(version)
    chain.setup(version)


def cmd_add(args: CmdArgs) -> Result:
    pc = load(args)
    if pc.prev is None:
        raise PluginError("must be called as chained plugin")
    if not pc.mappings:
        return pc.prev
    done: list[int] = []
    try:
        for container in (pc.cont_v4, pc.cont_v6):
            if container is not None:
                _forward(pc, args.container_id, container)
                done.append(container.version)
    except Exception:
        for version in done:
            _try(dnat_chain(pc, args.container_id, None).teardown, version)
        raise
    _flush_udp_conntrack(pc)
    return pc.prev


def cmd_del(args: CmdArgs) -> None:
    pc = load(args)
    if not pc.mappings:
        return
    chain = dnat_chain(pc, args.container_id, None)
    for version in (4, 6):
        if ipmasq.tool_path(version):
            chain.teardown(version)


def cmd_check(args: CmdArgs) -> None:
    pc = load(args)
    if pc.prev is None:
        raise PluginError("Required prevResult missing")
    for container in (pc.cont_v4, pc.cont_v6):
        if container is None or not pc.mappings:
            continue
        if pc.snat and pc.external_setmark is None:
            setmark_chain(pc).check(container.version)
            masq_chain(pc).check(container.version)
        toplevel_chain().check(container.version)
        dnat_chain(pc, args.container_id, container).check(container.version)


def _enable_route_localnet(container: IPInterface) -> None:
    """Let 127.0.0.1:hostPort DNAT to the container: route_localnet on the host interface."""
    from dataplane.cni.ip import link, sysctl

    try:
        with link.iproute() as ipr:
            routes = ipr.route("get", dst=str(container.ip))
            oif = routes[0].get_attr("RTA_OIF") if routes else None
            dev = link.by_index(ipr, oif) if oif else None
        if dev is not None:
            sysctl.write(f"net/ipv4/conf/{dev.name}/route_localnet", "1")
    except Exception as exc:  # noqa: BLE001 - the reference tolerates an unroutable container
        print(f"portmap: route_localnet not set: {exc}", file=sys.stderr)


def _flush_udp_conntrack(pc: PortMapConf) -> None:
    """Stale UDP conntrack entries would blackhole the new mapping (plugins#123); best effort."""
    tool = shutil.which("conntrack")
    if tool is None:
        return
    for m in pc.mappings:
        if m.protocol == "udp":
            subprocess.run([tool, "-D", "-p", "udp", "--dport", str(m.host_port)], capture_output=True)


def _try(fn: Any, *a: Any) -> None:
    try:
        fn(*a)
    except Exception as exc:  # noqa: BLE001 - best effort, logged
        print(f"portmap: ignoring: {exc}", file=sys.stderr)


PLUGIN = PluginSpec(name="portmap", add=cmd_add, check=cmd_check, delete=cmd_del)


def main() -> None:
    _main(PLUGIN)


if __name__ == "__main__":
    main()

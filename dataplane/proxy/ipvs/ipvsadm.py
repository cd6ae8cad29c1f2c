"""`ipvsadm-save -n` text: generate it from a ServiceTable and parse it back.

Output follows ipvsadm.c `print_service_entry()` in FMT_RULE form:
    -A -t VIP:PORT -s SCHED [-p TIMEOUT [-M NETMASK]] [-b FLAGS] [-o]
    -a -t VIP:PORT -r RIP:PORT -m|-g|-i -w WEIGHT
(format strings checked against the Debian ipvsadm 1.31 binary: "-A %s -s %s", " -p %u", " -M %s",
" -M %i", " -o", " -b ", "-a %s -r %s %s -w %d"; thresholds are not saved)
`-u` for UDP, `--sctp-service` for SCTP, IPv6 addresses in brackets, the IPv4 netmask dotted and
printed only when not 255.255.255.255 (IPv6: a prefix length, only when not 128). Real servers come
in the kernel's list order (newest first, see service.py); the parser rebuilds that order as
written, so a dump loads as the node had it. (`ipvsadm -R` would re-add them one by one and so
reverse them: the reason we do not replay.)

The parser also takes the long option spellings ipvsadm accepts (`--add-service`, `--tcp-service`,
`--scheduler`, `--persistent`, `--real-server`, `--masquerading`, `--weight`, ...).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from dataplane.proxy.ipvs.conn import Conn
from dataplane.proxy.ipvs.dest import FORWARD_METHODS, FWD_GATE, FWD_MASQ, FWD_TUNNEL, Dest
from dataplane.proxy.ipvs.sched.base import SVC_F_ONEPACKET, SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3
from dataplane.proxy.ipvs.service import DEFAULT_PERSISTENCE, IpvsError, ServiceTable, VirtualService

PROTO_SWITCH = {6: "-t", 17: "-u", 132: "--sctp-service"}
SWITCH_PROTO = {"-t": 6, "--tcp-service": 6, "-u": 17, "--udp-service": 17, "--sctp-service": 132}
FWD_SWITCH = {"-m": FWD_MASQ, "--masquerading": FWD_MASQ, "-g": FWD_GATE, "--gatewaying": FWD_GATE,
              "-i": FWD_TUNNEL, "--ipip": FWD_TUNNEL}
_SCHED_FLAG_NAMES = {"sh": ("sh-fallback", "sh-port"), "mh": ("mh-fallback", "mh-port")}


class IpvsadmParseError(IpvsError):
    def __init__(self, lineno: int, line: str, reason: str) -> None:
        super().__init__(f"ipvsadm-save line {lineno}: {reason}: {line.strip()!r}")
        self.lineno = lineno


def _addr_port(addr: object, port: int) -> str:
    return f"[{addr}]:{port}" if getattr(addr, "version", 4) == 6 else f"{addr}:{port}"


def service_switch(svc: VirtualService) -> str:
    return f"{PROTO_SWITCH[svc.proto]} {_addr_port(svc.addr, svc.port)}"


def _sched_flags(svc: VirtualService) -> str:
    names = _SCHED_FLAG_NAMES.get(svc.scheduler_name, ("flag-1", "flag-2"))
    out = []
    if svc.flags & SVC_F_SCHED1:
        out.append(names[0])
    if svc.flags & SVC_F_SCHED2:
        out.append(names[1])
    if svc.flags & SVC_F_SCHED3:
        out.append("flag-3")
    return ",".join(out)


def service_line(svc: VirtualService) -> str:
    parts = [f"-A {service_switch(svc)} -s {svc.scheduler_name}"]
    if svc.flags & SVC_F_PERSISTENT:
        parts.append(f"-p {svc.timeout}")
        if svc.addr.version == 4 and svc.netmask != 32:
            mask = IPv4Address((0xFFFFFFFF << (32 - svc.netmask)) & 0xFFFFFFFF)
            parts.append(f"-M {mask}")
        if svc.addr.version == 6 and svc.netmask != 128:
            parts.append(f"-M {svc.netmask}")
    if svc.flags & (SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3):
        parts.append(f"-b {_sched_flags(svc)}")
    if svc.flags & SVC_F_ONEPACKET:
        parts.append("-o")
    return " ".join(parts)


def dest_line(svc: VirtualService, dest: Dest) -> str:
    """`-a %s -r %s %s -w %d`: thresholds (-x/-y) are not saved by ipvsadm -S."""
    return f"-a {service_switch(svc)} -r {_addr_port(dest.addr, dest.port)} -{dest.fwd} -w {dest.weight}"


def list_text(services: Iterable[VirtualService]) -> str:
    """`ipvsadm -Ln`, with ipvsadm 1.31's format strings (`%-4s %s`, `  -> %-28s %-7s %-6d %-10u %-10u`)
    and the kernel's "version 1.2.1 (size=4096)" banner (IP_VS_CONN_TAB_BITS 12)."""
    out = ["IP Virtual Server version 1.2.1 (size=4096)",
           "Prot LocalAddress:Port Scheduler Flags",
           "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    protos = {6: "TCP", 17: "UDP", 132: "SCTP"}
    for svc in services:
        line = f"{protos[svc.proto]:<4} {_addr_port(svc.addr, svc.port)} {svc.scheduler_name}"
        if svc.flags & (SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3):
            line += f" ({_sched_flags(svc)})"
        if svc.flags & SVC_F_PERSISTENT:
            line += f" persistent {svc.timeout}"
            if svc.addr.version == 4 and svc.netmask != 32:
                line += f" mask {IPv4Address((0xFFFFFFFF << (32 - svc.netmask)) & 0xFFFFFFFF)}"
            if svc.addr.version == 6 and svc.netmask != 128:
                line += f" mask {svc.netmask}"
        if svc.flags & SVC_F_ONEPACKET:
            line += " ops"
        out.append(line)
        for d in svc.destinations:
            out.append(f"  -> {_addr_port(d.addr, d.port):<28} {FORWARD_METHODS[d.fwd]:<7} {d.weight:<6} "
                       f"{d.activeconns:<10} {d.inactconns:<10}")
    return "".join(line + "\n" for line in out)


def conn_list_text(conns: Iterable[Conn], now: float) -> str:
    """`ipvsadm -Lnc`: "pro expire state source virtual destination", ipvsadm 1.31's
    `%-3s %-6s %-11s %-18s %-18s %s` with the expiry as `%02d:%02d` (minutes:seconds, from
    /proc/net/ip_vs_conn's whole seconds). Templates show as state NONE with client port 0. The
    kernel lists in hash-bucket order; we list templates first, then entries by creation."""
    protos = {6: "TCP", 17: "UDP", 132: "SCTP"}
    out = ["IPVS connection entries", f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination"]
    for c in conns:
        left = max(0, int(c.expires - now))
        expire = f"{left // 60:02d}:{left % 60:02d}"
        out.append(f"{protos.get(c.proto, str(c.proto)):<3} {expire:<6} {c.state_name():<11} "
                   f"{_addr_port(c.caddr, c.cport):<18} {_addr_port(c.vaddr, c.vport):<18} "
                   f"{_addr_port(c.daddr, c.dport)}")
    return "".join(line + "\n" for line in out)


def save(services: Iterable[VirtualService]) -> str:
    """The whole table as `ipvsadm-save -n` prints it."""
    lines: list[str] = []
    for svc in services:
        lines.append(service_line(svc))
        lines.extend(dest_line(svc, d) for d in svc.destinations)
    return "".join(line + "\n" for line in lines)


# -- parsing -------------------------------------------------------------------------------
@dataclass
class _Rule:
    command: str  # "A" or "a"
    proto: int
    addr: object
    port: int
    scheduler: str = "rr"
    persistent: int | None = None
    netmask: int | None = None
    flags: int = 0
    rs: tuple[object, int] | None = None
    fwd: str = FWD_MASQ
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0


def _split_addr_port(text: str, *, need_port: bool = True) -> tuple[object, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated IPv6 bracket in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after IPv6 address in {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"IPv6 address must be written in brackets: {text!r}")
    else:
        host, port_text = text, ""
    addr = ip_address(host)
    if not port_text:
        if need_port:
            raise ValueError(f"missing port in {text!r}")
        return addr, 0
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port {port_text!r}")
    return addr, int(port_text)


def _netmask(text: str, version: int) -> int:
    if version == 6 or text.isdigit():
        value = int(text)
        if not 0 <= value <= (32 if version == 4 else 128):
            raise ValueError(f"netmask /{value} out of range")
        return value
    mask = int(IPv4Address(text))
    prefix = 32 - ((~mask) & 0xFFFFFFFF).bit_length()
    if (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF != mask:
        raise ValueError(f"netmask {text} is not contiguous")
    return prefix


def _sched_flag_bits(text: str) -> int:
    bits = 0
    for name in text.split(","):
        if name in ("sh-fallback", "mh-fallback", "flag-1"):
            bits |= SVC_F_SCHED1
        elif name in ("sh-port", "mh-port", "flag-2"):
            bits |= SVC_F_SCHED2
        elif name == "flag-3":
            bits |= SVC_F_SCHED3
        else:
            raise ValueError(f"unknown scheduler flag {name!r}")
    return bits


def _parse_line(tokens: list[str]) -> _Rule:
    it = iter(range(len(tokens)))
    command = None
    proto = None
    addr: object = None
    port = 0
    rule_kw: dict[str, object] = {}

    def value(i: int) -> str:
        if i + 1 >= len(tokens) or (tokens[i + 1].startswith("-") and not tokens[i + 1][1:].isdigit()):
            raise ValueError(f"option {tokens[i]} needs a value")
        return tokens[i + 1]

    skip = False
    for i in it:
        if skip:
            skip = False
            continue
        tok = tokens[i]
        if tok in ("-A", "--add-service"):
            command = "A"
        elif tok in ("-a", "--add-server"):
            command = "a"
        elif tok in SWITCH_PROTO:
            proto = SWITCH_PROTO[tok]
            addr, port = _split_addr_port(value(i))
            skip = True
        elif tok in ("-f", "--fwmark-service"):
            raise ValueError("firewall-mark services are not modelled")
        elif tok in ("-s", "--scheduler"):
            rule_kw["scheduler"] = value(i)
            skip = True
        elif tok in ("-p", "--persistent"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            if nxt.isdigit():
                rule_kw["persistent"] = int(nxt)
                skip = True
            else:
                rule_kw["persistent"] = DEFAULT_PERSISTENCE
        elif tok in ("-M", "--netmask"):
            rule_kw["netmask_text"] = value(i)
            skip = True
        elif tok in ("-b", "--sched-flags"):
            rule_kw["flags"] = int(rule_kw.get("flags", 0)) | _sched_flag_bits(value(i))  # type: ignore[arg-type]
            skip = True
        elif tok in ("-o", "--ops"):
            rule_kw["flags"] = int(rule_kw.get("flags", 0)) | SVC_F_ONEPACKET  # type: ignore[arg-type]
        elif tok in ("-r", "--real-server"):
            rule_kw["rs"] = _split_addr_port(value(i), need_port=False)
            skip = True
        elif tok in FWD_SWITCH:
            rule_kw["fwd"] = FWD_SWITCH[tok]
        elif tok in ("-w", "--weight", "-x", "--u-threshold", "-y", "--l-threshold"):
            text = value(i)
            if not text.isdigit():
                raise ValueError(f"{tok} needs a non-negative integer, got {text!r}")
            name = {"-w": "weight", "--weight": "weight", "-x": "u_threshold", "--u-threshold": "u_threshold",
                    "-y": "l_threshold", "--l-threshold": "l_threshold"}[tok]
            rule_kw[name] = int(text)
            skip = True
        else:
            raise ValueError(f"unsupported token {tok!r}")
    if command is None:
        raise ValueError("neither -A (service) nor -a (real server)")
    if proto is None:
        raise ValueError("no -t/-u/--sctp-service VIP:PORT")
    netmask_text = rule_kw.pop("netmask_text", None)
    rule = _Rule(command, proto, addr, port, **rule_kw)  # type: ignore[arg-type]
    if netmask_text is not None:
        rule.netmask = _netmask(str(netmask_text), getattr(addr, "version", 4))
    if command == "a" and rule.rs is None:
        raise ValueError("-a needs -r RIP[:PORT]")
    return rule


def load(text: str) -> ServiceTable:
    """Parse `ipvsadm-save -n` output into a ServiceTable (all-or-nothing: errors name the line)."""
    table = ServiceTable()
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            rule = _parse_line(shlex.split(stripped))
        except ValueError as exc:
            raise IpvsadmParseError(lineno, line, str(exc)) from None
        try:
            if rule.command == "A":
                flags = rule.flags | (SVC_F_PERSISTENT if rule.persistent else 0)
                version = getattr(rule.addr, "version", 4)
                svc = VirtualService(rule.proto, rule.addr, rule.port, rule.scheduler, flags,  # type: ignore[arg-type]
                                     rule.persistent or 0,
                                     rule.netmask if rule.netmask is not None else (32 if version == 4 else 128))
                table.add(svc)
            else:
                svc_found = table.find(rule.proto, rule.addr, rule.port)  # type: ignore[arg-type]
                if svc_found is None:
                    raise IpvsError("real server for a service not defined above")
                rs_addr, rs_port = rule.rs  # type: ignore[misc]
                svc_found.append_dest(Dest(rs_addr, rs_port or rule.port, rule.weight, rule.fwd,  # type: ignore[arg-type]
                                           rule.u_threshold, rule.l_threshold))
        except ValueError as exc:
            raise IpvsadmParseError(lineno, line, str(exc)) from None
    return table

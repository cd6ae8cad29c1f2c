"""`ipset save` / `ipset restore` text for the set types kube-proxy's IPVS mode uses.

Format as ipset 7.x prints it (checked against the kernel here):
    create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0x...
    add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 comment "Kubernetes service cluster ip + port for masquerade purpose"
    create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 comment
    add KUBE-NODE-PORT-TCP 30080
Supported types: hash:ip, hash:ip,port, hash:ip,port,ip, hash:ip,port,net, bitmap:port. Members
are normalised (addresses parsed, protocol names lower-case) so that text from the kernel and text
we generate compare equal. `bucketsize`/`initval` are kept when read (the kernel picks a random
initval) but never generated.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

SET_TYPES = ("hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:ip,port,net", "bitmap:port")
_PROTOS = ("tcp", "udp", "sctp")


class IpsetError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    """One element; `key` is the normalised member text, `comment` its optional comment."""

    key: str
    comment: str | None = None


@dataclass
class IpSet:
    name: str
    type: str
    family: str = "inet"
    hashsize: int = 1024
    maxelem: int = 65536
    comment: bool = False
    range: tuple[int, int] | None = None  # bitmap:port
    extra: dict[str, str] = field(default_factory=dict)  # bucketsize, initval ... as read
    members: dict[str, Member] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in SET_TYPES:
            raise IpsetError(f"set {self.name}: type {self.type!r} not supported ({', '.join(SET_TYPES)})")
        if not self.name or len(self.name) > 31 or any(c.isspace() for c in self.name):
            raise IpsetError(f"set name {self.name!r} must be 1..31 characters without spaces")
        if self.family not in ("inet", "inet6"):
            raise IpsetError(f"set {self.name}: family {self.family!r} must be inet or inet6")
        if self.type == "bitmap:port" and self.range is None:
            self.range = (0, 65535)

    def add(self, member: str, comment: str | None = None) -> Member:
        if comment is not None and not self.comment:
            raise IpsetError(f"set {self.name} was created without the comment option")
        key = normalise_member(self, member)
        m = Member(key, comment)
        self.members[key] = m
        return m

    def __contains__(self, member: str) -> bool:
        return normalise_member(self, member) in self.members

    def create_line(self) -> str:
        if self.type == "bitmap:port":
            assert self.range is not None
            line = f"create {self.name} {self.type} range {self.range[0]}-{self.range[1]}"
        else:
            line = (f"create {self.name} {self.type} family {self.family} hashsize {self.hashsize} "
                    f"maxelem {self.maxelem}")
        if self.comment:
            line += " comment"
        return line


def _ip(text: str, family: str, what: str) -> str:
    addr = ip_address(text)
    if (addr.version == 4) != (family == "inet"):
        raise IpsetError(f"{what} {text} does not match family {family}")
    return str(addr)


def _proto_port(text: str) -> str:
    proto, sep, port = text.partition(":")
    if not sep:
        proto, port = "tcp", text  # ipset's default protocol
    proto = proto.lower()
    if proto not in _PROTOS:
        raise IpsetError(f"protocol {proto!r} not supported (tcp, udp, sctp)")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise IpsetError(f"bad port {port!r}")
    return f"{proto}:{int(port)}"


def normalise_member(s: IpSet, member: str) -> str:
    """The member as `ipset save` prints it."""
    try:
        if s.type == "bitmap:port":
            if not member.isdigit():
                raise IpsetError(f"bitmap:port member must be a port number, got {member!r}")
            port = int(member)
            assert s.range is not None
            if not s.range[0] <= port <= s.range[1]:
                raise IpsetError(f"port {port} outside the set range {s.range[0]}-{s.range[1]}")
            return str(port)
        parts = member.split(",")
        want = s.type.split(":")[1].split(",")
        if len(parts) != len(want):
            raise IpsetError(f"member {member!r} does not have the {s.type} shape")
        out = []
        for part, kind in zip(parts, want):
            if kind == "ip":
                out.append(_ip(part, s.family, "address"))
            elif kind == "port":
                out.append(_proto_port(part))
            else:  # net
                net = ip_network(part, strict=False)
                if (net.version == 4) != (s.family == "inet"):
                    raise IpsetError(f"network {part} does not match family {s.family}")
                limit = 32 if net.version == 4 else 128
                out.append(str(net.network_address) if net.prefixlen == limit else str(net))
        return ",".join(out)
    except ValueError as exc:
        if isinstance(exc, IpsetError):
            raise
        raise IpsetError(f"set {s.name}: bad member {member!r}: {exc}") from None


def save(sets: list[IpSet]) -> str:
    """`ipset save` text; also valid `ipset restore` input."""
    lines: list[str] = []
    for s in sets:
        lines.append(s.create_line())
        for m in s.members.values():
            line = f"add {s.name} {m.key}"
            if m.comment is not None:
                line += f' comment "{m.comment}"'
            lines.append(line)
    return "".join(line + "\n" for line in lines)


def load(text: str) -> dict[str, IpSet]:
    """Parse `ipset save` output (or restore input); errors name the line."""
    sets: dict[str, IpSet] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped == "COMMIT":
            continue
        try:
            tokens = shlex.split(stripped)
            verb = tokens[0]
            if verb in ("create", "-N", "n"):
                s = _parse_create(tokens)
                if s.name in sets:
                    raise IpsetError(f"set {s.name} created twice")
                sets[s.name] = s
            elif verb in ("add", "-A", "a"):
                if len(tokens) < 3:
                    raise IpsetError("add needs a set name and a member")
                target = sets.get(tokens[1])
                if target is None:
                    raise IpsetError(f"set {tokens[1]} is not created above")
                comment = None
                rest = tokens[3:]
                while rest:
                    opt = rest.pop(0)
                    if opt == "comment" and rest:
                        comment = rest.pop(0)
                    elif opt in ("timeout", "packets", "bytes", "skbmark", "skbprio", "skbqueue") and rest:
                        rest.pop(0)
                    elif opt == "nomatch":
                        pass
                    else:
                        raise IpsetError(f"unsupported add option {opt!r}")
                target.add(tokens[2], comment)
            else:
                raise IpsetError(f"unsupported command {verb!r}")
        except (IpsetError, ValueError, IndexError) as exc:
            raise IpsetError(f"ipset line {lineno}: {exc}: {stripped!r}") from None
    return sets


def _parse_create(tokens: list[str]) -> IpSet:
    if len(tokens) < 3:
        raise IpsetError("create needs a name and a type")
    name, type_ = tokens[1], tokens[2]
    kw: dict[str, object] = {}
    extra: dict[str, str] = {}
    rest = tokens[3:]
    while rest:
        opt = rest.pop(0)
        if opt == "comment":
            kw["comment"] = True
        elif opt in ("counters", "skbinfo", "forceadd"):
            extra[opt] = ""
        elif not rest:
            raise IpsetError(f"create option {opt!r} needs a value")
        elif opt == "family":
            kw["family"] = rest.pop(0)
        elif opt in ("hashsize", "maxelem"):
            kw[opt] = int(rest.pop(0))
        elif opt == "range":
            lo, _, hi = rest.pop(0).partition("-")
            kw["range"] = (int(lo), int(hi))
        else:
            extra[opt] = rest.pop(0)
    return IpSet(name, type_, extra=extra, **kw)  # type: ignore[arg-type]

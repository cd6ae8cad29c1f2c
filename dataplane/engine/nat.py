"""NAT bindings on conntrack entries, as nf_nat_core.c sets them up and applies them.

A binding is chosen once, for a connection's first packet (`setup`), by changing the connection's
reply tuple; every later packet of the connection, in both directions, is rewritten from the two
tuples (`apply`), with no rule lookup. Port choice keeps tuples unique the way get_unique_tuple()
and nf_nat_l4proto_unique_tuple() do, including --random / --random-fully and the implicit "null
binding" that remaps a clashing source port even without an SNAT rule.

Not modelled: address ranges are chosen by a stable hash rather than the kernel's jhash (a single
address, the only form kube-proxy and the CNI plugins use, is exact); NF_NAT_RANGE_PROTO_OFFSET.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from ipaddress import ip_address

from dataplane.engine import packet as pkt
from dataplane.engine.conntrack import ORIGINAL, REPLY, Connection, ConntrackTable, Tracked, Tuple
from dataplane.engine.types import CtState, Hook, IPAddress, NatAction, NatKind

NF_NAT_MAX_ATTEMPTS = 128


class Manip(enum.Enum):
    SRC = "SRC"
    DST = "DST"


def manip_of(hook: Hook) -> Manip:
    """HOOK2MANIP: source NAT at POSTROUTING and INPUT, destination NAT at PREROUTING and OUTPUT."""
    return Manip.SRC if hook in (Hook.POSTROUTING, Hook.INPUT) else Manip.DST


@dataclass(frozen=True)
class NatRange:
    """struct nf_nat_range2, reduced to what iptables/nft targets set."""

    min_addr: IPAddress | None = None  # None: keep the address (no NF_NAT_RANGE_MAP_IPS)
    max_addr: IPAddress | None = None
    min_port: int | None = None  # None: no NF_NAT_RANGE_PROTO_SPECIFIED
    max_port: int | None = None
    random: bool = False  # --random (NF_NAT_RANGE_PROTO_RANDOM)
    random_fully: bool = False  # --random-fully (NF_NAT_RANGE_PROTO_RANDOM_FULLY)
    persistent: bool = False

    @property
    def random_all(self) -> bool:
        return self.random or self.random_fully

    @property
    def proto_specified(self) -> bool:
        return self.min_port is not None

    @classmethod
    def from_action(cls, action: NatAction, masquerade_addr: IPAddress | None = None) -> "NatRange":
        """The range a DNAT/SNAT/MASQUERADE target asks for (MASQUERADE: the out-interface address)."""
        addr = action.addr
        if action.kind is NatKind.MASQUERADE:
            if masquerade_addr is None:
                raise ValueError("MASQUERADE needs the out-interface's address")
            addr = masquerade_addr
        port = action.port
        addr_max = getattr(action, "addr_max", None) or addr
        port_max = getattr(action, "port_max", None)
        return cls(min_addr=addr, max_addr=addr_max if addr is not None else None, min_port=port,
                   max_port=port_max if port_max is not None else port,
                   random=getattr(action, "random", False), random_fully=action.random_fully,
                   persistent=getattr(action, "persistent", False))


@dataclass
class Nat:
    """NAT decisions over one conntrack table, with an injectable random source for port choice."""

    table: ConntrackTable
    rng: random.Random

    def initialized(self, conn: Connection, manip: Manip) -> bool:
        return f"{manip.value}_NAT_DONE" in conn.status

    def setup(self, conn: Connection, rng_range: NatRange, manip: Manip) -> None:
        """nf_nat_setup_info: pick the translated tuple and store it as the connection's reply."""
        if conn.confirmed:
            return
        if self.initialized(conn, manip):
            raise RuntimeError(f"{manip.value} NAT already set up for connection {conn.id}")
        current = conn.reply.invert()
        new = self._unique_tuple(current, rng_range, conn, manip)
        if new != current:
            self.table.alter_reply(conn, new.invert())
            conn.status.add(f"{manip.value}_NAT")
        conn.status.add(f"{manip.value}_NAT_DONE")

    def null_binding(self, conn: Connection, manip: Manip) -> None:
        """nf_nat_alloc_null_binding: no rule chose NAT; keep the address, keep the tuple unique."""
        addr = conn.reply.dst if manip is Manip.SRC else conn.reply.src
        self.setup(conn, NatRange(min_addr=addr, max_addr=addr), manip)

    # ---- applying a binding to a packet
    def apply(self, data: bytes, tracked: Tracked, hook: Hook) -> bytes:
        """nf_nat_packet / nf_nat_icmp_reply_translation: rewrite one packet at a NAT hook."""
        conn = tracked.conn
        if conn is None:
            return data
        manip = manip_of(hook)
        statusbit = manip
        if tracked.direction == REPLY:
            statusbit = Manip.DST if manip is Manip.SRC else Manip.SRC
        if f"{statusbit.value}_NAT" not in conn.status:
            return data
        other = conn.tuple_for(REPLY if tracked.direction == ORIGINAL else ORIGINAL)
        if tracked.state is CtState.RELATED and pkt.parse(data).is_icmp_error:
            # The quoted packet went the other way: give it the opposite manip, from the other
            # direction's tuple; then make the outer header look like a reply (addresses only).
            inner_manip = Manip.DST if manip is Manip.SRC else Manip.SRC
            data = pkt.rewrite_quoted(data, **_fields(other, inner_manip, ports=True))
            return pkt.rewrite(data, **_fields(other.invert(), manip, ports=False))
        target = other.invert()
        return pkt.rewrite(data, **_fields(target, manip, ports=True))

    # ---- get_unique_tuple and friends
    def used(self, t: Tuple, conn: Connection) -> bool:
        """nf_nat_used_tuple: would `t` as an original tuple clash with another connection?"""
        return self.table.tuple_taken(t.invert(), ignoring=conn)

    def _unique_tuple(self, orig: Tuple, r: NatRange, conn: Connection, manip: Manip) -> Tuple:
        if manip is Manip.SRC and not r.random_all:
            if _in_range(orig, r, manip):
                if not self.used(orig, conn):
                    return orig
            else:
                found = self._appropriate_src(orig, r)
                if found is not None and not self.used(found, conn):
                    return found
        t = self._best_ips(orig, r, manip)
        if not r.random_all:
            if r.proto_specified:
                if _port_in_range(t, r, manip) and (r.min_port == r.max_port or not self.used(t, conn)):
                    return t
            elif not self.used(t, conn):
                return t
        return self._l4_unique(t, r, manip, conn)

    def _appropriate_src(self, orig: Tuple, r: NatRange) -> Tuple | None:
        """find_appropriate_src: reuse the mapping an existing connection from the same source has."""
        for conn in self.table.by_source(orig.family, orig.proto, orig.src, orig.sport):
            if "SRC_NAT_DONE" in conn.status:
                mapped = conn.reply.invert()
                candidate = Tuple(orig.family, orig.proto, mapped.src, mapped.sport, orig.dst, orig.dport)
                if _in_range(candidate, r, Manip.SRC):
                    return candidate
        return None

    def _best_ips(self, t: Tuple, r: NatRange, manip: Manip) -> Tuple:
        """find_best_ips_proto: a single address is used as is; a range is spread by a stable hash."""
        if r.min_addr is None:
            return t
        lo, hi = int(r.min_addr), int(r.max_addr or r.min_addr)
        if lo == hi:
            addr = r.min_addr
        else:
            key = hash((int(t.src), 0 if r.persistent else int(t.dst))) & 0xFFFFFFFF
            addr = ip_address(lo + key % (hi - lo + 1))
        if manip is Manip.SRC:
            return Tuple(t.family, t.proto, addr, t.sport, t.dst, t.dport)
        return Tuple(t.family, t.proto, t.src, t.sport, addr, t.dport)

    def _l4_unique(self, t: Tuple, r: NatRange, manip: Manip, conn: Connection) -> Tuple:
        """nf_nat_l4proto_unique_tuple: walk the port range from an offset until a free tuple."""
        if not t.has_ports and t.proto not in (pkt.ICMP, pkt.ICMPV6):
            return t
        icmp = t.proto in (pkt.ICMP, pkt.ICMPV6)
        key_is_src = icmp or manip is Manip.SRC
        current = t.sport if key_is_src else t.dport
        if icmp:
            lo, size = (0, 65536) if not r.proto_specified else (r.min_port, r.max_port - r.min_port + 1)
        elif not r.proto_specified:
            if manip is Manip.DST:
                return t  # a destination port is never changed unless a range says so
            if current < 1024:
                lo, size = (1, 511) if current < 512 else (600, 424)
            else:
                lo, size = 1024, 65536 - 1024
        else:
            a, b = sorted((r.min_port, r.max_port))
            lo, size = a, b - a + 1
        off = self.rng.getrandbits(16) if (icmp or r.random_all or manip is not Manip.DST) else 0
        attempts = min(size, NF_NAT_MAX_ATTEMPTS)
        candidate = t
        while True:
            for _ in range(attempts):
                port = lo + off % size
                candidate = _with_key(t, port, key_is_src)
                if not self.used(candidate, conn):
                    return candidate
                off = (off + 1) & 0xFFFF
            if attempts >= size or attempts < 16:
                return candidate  # no free tuple: confirm will fail and the packet is dropped
            attempts //= 2
            off = self.rng.getrandbits(16)


def _with_key(t: Tuple, port: int, src: bool) -> Tuple:
    if src:
        return Tuple(t.family, t.proto, t.src, port, t.dst, t.dport)
    return Tuple(t.family, t.proto, t.src, t.sport, t.dst, port)


def _in_range(t: Tuple, r: NatRange, manip: Manip) -> bool:
    addr = t.src if manip is Manip.SRC else t.dst
    if r.min_addr is not None and not int(r.min_addr) <= int(addr) <= int(r.max_addr or r.min_addr):
        return False
    return _port_in_range(t, r, manip)


def _port_in_range(t: Tuple, r: NatRange, manip: Manip) -> bool:
    if not r.proto_specified or not t.has_ports:
        return True
    port = t.sport if manip is Manip.SRC else t.dport
    a, b = sorted((r.min_port, r.max_port))  # type: ignore[type-var]
    return a <= port <= b


def _fields(target: Tuple, manip: Manip, *, ports: bool) -> dict[str, object]:
    """The rewrite() keywords that put `target`'s source or destination half on a packet."""
    icmp = target.proto in (pkt.ICMP, pkt.ICMPV6)
    out: dict[str, object] = {"src": target.src} if manip is Manip.SRC else {"dst": target.dst}
    if ports and icmp:
        out["sport"] = target.sport  # the echo id is set from the source half for either manip
    elif ports and target.has_ports:
        out["sport" if manip is Manip.SRC else "dport"] = (target.sport if manip is Manip.SRC
                                                           else target.dport)
    return out

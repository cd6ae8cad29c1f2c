"""IPVS inside the pipeline, where the kernel hooks it (net/netfilter/ipvs/ip_vs_core.c `ip_vs_ops4`):

    LOCAL_IN   NAT_SRC-2 (98)  ip_vs_reply4           replies to a local client: SNAT back to the VIP
    LOCAL_IN   NAT_SRC-1 (99)  ip_vs_remote_request4  schedule / look up, DNAT to the real server
    LOCAL_OUT  NAT_DST+1 (-99) ip_vs_local_reply4     replies from a local real server
    LOCAL_OUT  NAT_DST+2 (-98) ip_vs_local_request4   requests from local processes
    FORWARD    100             ip_vs_reply4           replies routed through the node

So IPVS sees a packet after the filter table's INPUT rules (kube-proxy's KUBE-IPVS-FILTER and
friends) and before nat INPUT and conntrack confirmation. The virtual addresses are local (the
`kube-ipvs0` dummy device, `Node.extra_local`), which is what routes the packet to LOCAL_IN.

Masquerading forwarding (`ip_vs_nat_xmit()`, ip_vs_xmit.c), the only method kube-proxy uses:
rewrite the destination to the real server, route again (`__ip_vs_get_out_rt()`: a non-local
real server costs one TTL, ICMP time exceeded at TTL 1), then `ip_vs_nat_send_or_cont()`:
- net.ipv4.vs.conntrack=1 (kube-proxy sets it): the still unconfirmed conntrack entry keeps its
  original tuple and gets the real server as its reply source (`ip_vs_update_conntrack()`), so
  POSTROUTING's MASQUERADE and the reply path see the translated flow;
  conntrack=0: the packet is untracked (`ip_vs_notrack()`): no NAT and no entry.
- a non-local real server: the packet is re-sent through LOCAL_OUT (OUTPUT hook) and POSTROUTING
  with `ipvs_property` set (IPVS ignores it there) and the hook returns NF_STOLEN;
  a local one: NF_ACCEPT, the packet continues to the local stack.
Replies (`ip_vs_out()` / `handle_response()`) have their source rewritten back to VIP:vport.
ICMP errors about IPVS connections (`ip_vs_in_icmp`, `ip_vs_forward_icmp`) are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dataplane.engine import packet as pkt
from dataplane.engine.conntrack import ORIGINAL, Tracked, Tuple
from dataplane.engine.pipeline import PRI_NAT_DST, PRI_NAT_SRC, Stolen, _Stop
from dataplane.engine.types import CtState, Decision, Hook, TraceStep, Verdict
from dataplane.proxy.ipvs.core import Ipvs, IpvsResult

if TYPE_CHECKING:
    from dataplane.engine.pipeline import PacketResult, Pipeline, _State
    from dataplane.proxy.ipvs.conn import Conn

REPLY_STEP, REQUEST_STEP = "ipvs-reply", "ipvs"
IPVS_STEPS: tuple[tuple[Hook, int, str], ...] = (
    (Hook.INPUT, PRI_NAT_SRC - 2, REPLY_STEP),
    (Hook.INPUT, PRI_NAT_SRC - 1, REQUEST_STEP),
    (Hook.OUTPUT, PRI_NAT_DST + 1, REPLY_STEP),
    (Hook.OUTPUT, PRI_NAT_DST + 2, REQUEST_STEP),
    (Hook.FORWARD, 100, REPLY_STEP),
)


@dataclass
class IpvsEvent:
    """One IPVS trace step: where, and what IPVS decided (for traces and tests). Events and the
    trace steps with table "ipvs" correspond one to one, in order."""

    hook: Hook
    step: str
    result: IpvsResult

    def summary(self) -> dict[str, object]:
        r = self.result
        svc, dest = r.service, r.dest
        out: dict[str, object] = {
            "hook": self.hook.value, "step": self.step,
            "virtual_server": svc.label() if svc is not None else None,
            "scheduler": svc.scheduler_name if svc is not None else None,
            "real_server": dest.label() if dest is not None else None,
            "new_connection": r.new_conn,
            "ipvs_verdict": r.verdict.value if r.verdict is not None else None,
        }
        if svc is not None and svc.persistent:
            templated = r.template is not None or (r.conn is not None and r.conn.control is not None)
            out["persistence"] = {"timeout": svc.timeout, "netmask": svc.netmask, "template": templated}
        if r.scheduler_state:
            out["scheduler_state"] = {k: str(v) for k, v in r.scheduler_state.items()}
        if r.conn is not None:
            out["connection"] = r.conn.label()
        return out


@dataclass
class IpvsStage:
    """The pipeline `Stage` that runs one namespace's IPVS at the kernel's hooks."""

    ipvs: Ipvs
    events: list[IpvsEvent] = field(default_factory=list)
    _resending: int = 0  # > 0 while a packet IPVS sent on runs its hooks (skb->ipvs_property)

    def steps(self, family: int) -> Sequence[tuple[Hook, int, str]]:
        return IPVS_STEPS

    def run(self, name: str, hook: Hook, pipeline: "Pipeline", state: "_State",
            result: "PacketResult") -> Decision | None:
        if self._resending:
            return None
        if name == REPLY_STEP:
            return self._reply(hook, pipeline, state, result)
        return self._request(hook, pipeline, state, result)

    # -- real server -> client ---------------------------------------------------------------
    def _reply(self, hook: Hook, pipeline: "Pipeline", st: "_State", res: "PacketResult") -> Decision | None:
        meta = pipeline._meta(st)
        out = self.ipvs.ip_vs_out(meta)
        if not out.handled or out.conn is None:
            return None
        self.events.append(IpvsEvent(hook, REPLY_STEP, out))
        cp = out.conn
        before = _endpoint(st.headers(), src=True)
        st.data = pkt.rewrite(st.data, src=cp.vaddr, sport=cp.vport)
        res.nat_applied.append(f"IPVS {hook.value}: {before} -> {_endpoint(st.headers(), src=True)}")
        return out.decision()

    # -- client -> virtual service -----------------------------------------------------------
    def _request(self, hook: Hook, pipeline: "Pipeline", st: "_State", res: "PacketResult") -> Decision | None:
        meta = pipeline._meta(st)
        r = self.ipvs.ip_vs_in(meta)
        if not r.handled:
            if r.service is not None:  # a known VS that does not take this packet (TCP without SYN)
                self.events.append(IpvsEvent(hook, REQUEST_STEP, r))
                return Decision(trace=[TraceStep("ipvs", r.service.label(), 0, "", False, "; ".join(r.notes))])
            return None
        self.events.append(IpvsEvent(hook, REQUEST_STEP, r))
        decision = r.decision()
        if r.verdict is not Verdict.ACCEPT or r.conn is None:
            return decision
        cp = r.conn
        self._update_conntrack(pipeline, st, cp)
        before = _endpoint(st.headers(), src=False)
        st.data = pkt.rewrite(st.data, dst=cp.daddr, dport=cp.dport)
        res.nat_applied.append(f"IPVS {hook.value}: {before} -> {_endpoint(st.headers(), src=False)}")
        pipeline._route(st, res)
        if res.local:
            if hook is Hook.INPUT and cp.daddr.is_loopback:  # "stopping DNAT to loopback address"
                raise _Stop(Verdict.DROP, "IPVS: DNAT from the outside to a loopback address")
            return decision  # NF_ACCEPT: on to the local stack
        if st.headers().ttl <= 1:
            raise _Stop(Verdict.DROP, "IPVS: TTL exceeded on the way to the real server", "ttl-exceeded")
        st.data = pkt.decrement_ttl(st.data)
        res.trace.extend(decision.trace)
        res.rules_evaluated += decision.rules_evaluated
        self._resending += 1
        try:
            pipeline._hook(Hook.OUTPUT, st, res, retrack=False)
            pipeline._hook(Hook.POSTROUTING, st, res)
        finally:
            self._resending -= 1
        raise Stolen()

    def _update_conntrack(self, pipeline: "Pipeline", st: "_State", cp: "Conn") -> None:
        """`ip_vs_update_conntrack(skb, cp, 1)` with vs/conntrack=1, else `ip_vs_notrack()`."""
        t = st.tracked
        if not self.ipvs.sysctls.conntrack:
            st.tracked = Tracked(CtState.UNTRACKED)
            return
        if t is None or t.conn is None or t.conn.confirmed or t.direction != ORIGINAL:
            return
        reply = t.conn.reply
        new = Tuple(reply.family, reply.proto, cp.daddr, cp.dport if reply.has_ports else reply.sport,
                    reply.dst, reply.dport)
        pipeline.conntrack.alter_reply(t.conn, new)


def _endpoint(h: pkt.Headers, *, src: bool) -> str:
    addr, port = (h.src, h.sport) if src else (h.dst, h.dport)
    return f"[{addr}]:{port}" if h.family == 6 else f"{addr}:{port}"


def attach(pipeline: "Pipeline", ipvs: Ipvs) -> IpvsStage:
    """Run `ipvs` in `pipeline` (sharing its clock is the caller's choice) and return the stage."""
    stage = IpvsStage(ipvs)
    pipeline.stages.append(stage)
    return stage

"""IPVS mode: the layout's iptables rules and ipsets, then IPVS at LOCAL_IN (engine.ipvs_hook)."""

from __future__ import annotations

from typing import Any

from dataplane.proxy.trace.common import Flow, NodeSpec, TraceInputError, TraceResult, _summarise, summary_record

def _ipvs_node(layout: Any, spec: NodeSpec, seed: int):  # type: ignore[no-untyped-def]
    from dataplane.proxy.ipvs.pipeline import IpvsRulesError, ipvs_node

    try:
        return ipvs_node(layout, spec.build(), seed=seed)
    except IpvsRulesError as exc:
        raise TraceInputError(str(exc)) from None


def _ipvs_packet(node: Any, spec: NodeSpec, flow: Flow, from_local: bool):  # type: ignore[no-untyped-def]
    node.stage.events.clear()
    data = flow.packet()
    return node.pipeline.send(data) if from_local else node.pipeline.receive(data, spec.ingress_for(flow.src))


def _ipvs_summary(res: Any, node: Any, flow: Flow) -> TraceResult:  # type: ignore[no-untyped-def]
    """The iptables trace's fields; each "ipvs" rule also names the virtual server, the scheduler
    and its state, and the real server chosen."""
    result = _summarise(res, flow, node.pipeline.clock.now())
    events = iter(node.stage.events)
    for rule in result.rules:
        if rule["table"] == "ipvs":
            event = next(events, None)
            if event is not None:
                rule.update(event.summary())
    return result


def trace_ipvs(layout: Any, spec: NodeSpec, flow: Flow, *, from_local: bool = False, seed: int = 0) -> TraceResult:
    """Trace one packet of a new flow through an IPVS-mode node built from `layout` (an IpvsLayout).
    IPVS schedulers are deterministic: there are no probabilistic branches to enumerate."""
    if flow.proto == "sctp":
        raise TraceInputError("IPVS SCTP connection state is not modelled; trace tcp or udp")
    node = _ipvs_node(layout, spec, seed)
    return _ipvs_summary(_ipvs_packet(node, spec, flow, from_local), node, flow)


def trace_ipvs_flows(layout: Any, spec: NodeSpec, flows: list[Flow], *, seed: int = 0,
                     with_rules: bool = False) -> list[dict[str, Any]]:
    """Many new flows in order through ONE IPVS node, as a node sees successive connections: the
    scheduler moves on (rr takes the next real server), persistence templates hold."""
    node = _ipvs_node(layout, spec, seed)
    records = []
    for flow in flows:
        if flow.proto == "sctp":
            raise TraceInputError("IPVS SCTP connection state is not modelled; trace tcp or udp")
        summary = _ipvs_summary(_ipvs_packet(node, spec, flow, False), node, flow)
        rec = summary_record(summary)
        if with_rules:
            rec["rules"] = summary.rules
        records.append(rec)
    return records

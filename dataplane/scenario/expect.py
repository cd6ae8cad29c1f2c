"""Checking the recorded traffic against the scenario's expectations.

Each expectation applies to every flow of its traffic entry (a NodePort entry has one flow per
node IP). A check yields a `Verdict` with a sentence saying what was seen, so a failure explains
itself in the summary table and the JSON report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dataplane.scenario import spec
from dataplane.scenario.endpoints import matches
from dataplane.scenario.traffic import FlowResult


@dataclass(frozen=True)
class Verdict:
    traffic: str
    target: str
    check: str
    passed: bool
    detail: str
    line: int = 0

    def to_json(self) -> dict:
        return {"traffic": self.traffic, "target": self.target, "check": self.check, "passed": self.passed,
                "detail": self.detail, "line": self.line}


@dataclass(frozen=True)
class Context:
    """What the checks need to know about the cluster as it was when the traffic ran."""

    pod_labels: dict[str, dict[str, str]]          # pod name -> labels
    ready_endpoint_pods: dict[str, list[str]]      # traffic name -> pods behind its target, ready
    zone: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)  # svc FQDN -> clusterIP/endpoints


def evaluate(e: spec.Expectation, flows: list[FlowResult], ctx: Context) -> list[Verdict]:
    out: list[Verdict] = []
    for flow in flows:
        def v(check: str, passed: bool, detail: str) -> None:
            out.append(Verdict(e.traffic, flow.target, check, passed, detail, e.line))

        n, answered = len(flow.outcomes), flow.answered
        errors = ", ".join(f"{k}×{c}" for k, c in flow.errors().items()) or "none"
        if e.reachable is not None:
            ok = len(answered) == n if e.reachable else not answered
            v("reachable" if e.reachable else "unreachable", ok,
              f"{len(answered)}/{n} answered; errors: {errors}")
        if e.rejected is not None:
            refused = flow.errors().get("refused", 0)
            ok = refused == n if e.rejected else refused == 0
            v("rejected" if e.rejected else "not rejected", ok, f"{refused}/{n} refused; errors: {errors}")
        if e.answered_by is not None:
            strangers = sorted({o.pod or "?" for o in answered
                                if not matches(e.answered_by, ctx.pod_labels.get(o.pod or "", {}))})
            v("answeredBy", bool(answered) and not strangers,
              f"answered by {flow.counts()}" + (f"; not matching {e.answered_by}: {strangers}" if strangers else ""))
        if e.affinity is not None:
            pods = set(flow.counts())
            ok = len(pods) == 1 if e.affinity else len(pods) > 1
            v("affinity" if e.affinity else "no affinity", ok and bool(answered), f"answered by {flow.counts()}")
        if e.source is not None:
            seen = sorted({(o.seen_source or "").rsplit(":", 1)[0] for o in answered})
            if e.source == "preserved":
                ok = bool(answered) and seen == [flow.client_ip]
            else:
                ok = bool(answered) and flow.client_ip not in seen
            v(f"source {e.source}", ok, f"client {flow.client_ip}; servers saw {seen or 'nothing'}")
        if e.resolves_to is not None:
            out.append(_resolution(e, flow, ctx))
        if e.distribution is not None:
            out.append(_distribution(e, flow, ctx))
    return out


def _resolution(e: spec.Expectation, flow: FlowResult, ctx: Context) -> Verdict:
    """What the cluster DNS answered, against the model: a ClusterIP, the ready endpoints, or a CNAME."""
    got = sorted(flow.resolved, key=lambda ip: tuple(map(int, ip.split("."))))
    name = (flow.cnames[-1] if flow.cnames else flow.host) or ""
    if e.resolves_to in ("clusterIP", "endpoints"):
        want = sorted(ctx.zone.get(name, {}).get(e.resolves_to, []), key=lambda ip: tuple(map(int, ip.split("."))))
        ok = bool(got) and got == want
        detail = f"{flow.host} -> {got}; the model's {e.resolves_to} for {name}: {want}"
    else:
        ok = e.resolves_to.rstrip(".") in flow.cnames
        detail = f"{flow.host} -> CNAME {flow.cnames or 'none'}, A {got}"
    return Verdict(e.traffic, flow.target, f"resolves to {e.resolves_to}", ok, detail, e.line)


def _distribution(e: spec.Expectation, flow: FlowResult, ctx: Context) -> Verdict:
    d = e.distribution
    assert d is not None
    answered = flow.answered
    if not answered:
        return Verdict(e.traffic, flow.target, "distribution", False, "nothing answered", e.line)
    if d.by is None:
        groups = {p: p for p in ctx.ready_endpoint_pods.get(e.traffic, [])}
        expected = {p: 1 / len(groups) for p in groups} if groups else {}
        label = "pod"
    else:
        groups = {p: ctx.pod_labels.get(p, {}).get(d.by, "<none>") for p in ctx.pod_labels}
        if d.weights:
            total = sum(d.weights.values())
            expected = {k: w / total for k, w in d.weights.items()}
        else:
            values = sorted({groups[p] for p in ctx.ready_endpoint_pods.get(e.traffic, [])})
            expected = {k: 1 / len(values) for k in values} if values else {}
        label = d.by
    observed: dict[str, int] = {}
    for o in answered:
        key = groups.get(o.pod or "", f"<outside: {o.pod}>")
        observed[key] = observed.get(key, 0) + 1
    shares = {k: c / len(answered) for k, c in observed.items()}
    worst = max((abs(shares.get(k, 0.0) - expected.get(k, 0.0)) for k in set(shares) | set(expected)), default=1.0)
    detail = (f"by {label}: observed " + ", ".join(f"{k}={shares.get(k, 0):.2f}" for k in sorted(set(shares) | set(expected)))
              + " expected " + ", ".join(f"{k}={v:.2f}" for k, v in sorted(expected.items()))
              + f"; max deviation {worst:.2f} (tolerance {d.tolerance})")
    return Verdict(e.traffic, flow.target, "distribution", bool(expected) and worst <= d.tolerance, detail, e.line)

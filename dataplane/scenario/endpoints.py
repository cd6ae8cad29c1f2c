"""EndpointSlices as the EndpointSlice controller would derive them.

For a Service with a selector: every pod in the Service's namespace whose labels match, that has
an IP, becomes an endpoint with `ready` from its readiness; each service port's `targetPort`
resolves per pod (a named targetPort looks the name up among that pod's container ports, and
pods where it does not resolve are left out of that port's slice). Services without a selector
take the EndpointSlices given in the scenario, as in Kubernetes. ExternalName services have none.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.scenario import spec
from dataplane.scenario.topology import PodPlan, ServicePlan


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    ready: bool
    node: str | None
    pod: str | None           # "namespace/name" when it is one of the scenario's pods


@dataclass(frozen=True)
class ServicePortEndpoints:
    """The endpoints of one service port, in the order the controller lists them (by IP)."""

    service: spec.Service
    port: spec.ServicePort
    endpoints: tuple[Endpoint, ...]

    @property
    def ready(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.ready)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _target_port(port: spec.ServicePort, pod: PodPlan) -> int | None:
    if isinstance(port.target_port, int):
        return port.target_port
    for cp in pod.template.ports:
        if cp.name == port.target_port and cp.protocol == port.protocol:
            return cp.port
    return None


def derive(svc: ServicePlan, pods: list[tuple[PodPlan, str | None, bool]],
           slices: tuple[spec.EndpointSlice, ...] = ()) -> list[ServicePortEndpoints]:
    """Endpoints per service port. `pods` is (pod, its IP or None, ready) for every pod."""
    s = svc.service
    if s.type == "ExternalName":
        return []
    out = []
    for port in s.ports:
        eps: list[Endpoint] = []
        if s.selector is not None:
            for pod, ip, ready in pods:
                if pod.namespace != s.namespace or ip is None or not s.selector or not matches(s.selector, pod.labels):
                    continue
                target = _target_port(port, pod)
                if target is not None:
                    eps.append(Endpoint(ip, target, ready, pod.node, pod.key))
        else:
            for sl in slices:
                if sl.namespace != s.namespace or sl.service != s.name:
                    continue
                sp = next((p for p in sl.ports if p.name == port.name and p.protocol == port.protocol), None)
                if sp is None:
                    continue
                for e in sl.endpoints:
                    for addr in e.addresses:
                        eps.append(Endpoint(addr, sp.port, e.ready, e.node_name,
                                            f"{s.namespace}/{e.pod}" if e.pod else None))
        eps.sort(key=lambda e: tuple(int(o) for o in e.ip.split(".")))
        out.append(ServicePortEndpoints(s, port, tuple(eps)))
    return out


def to_manifest(spe: ServicePortEndpoints) -> dict:
    """The discovery.k8s.io/v1 EndpointSlice for one service port (for reports)."""
    s, p = spe.service, spe.port
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{s.name}-{p.name or p.port}", "namespace": s.namespace,
                     "labels": {"kubernetes.io/service-name": s.name,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "endpoints": [{"addresses": [e.ip], "conditions": {"ready": e.ready, "serving": e.ready, "terminating": False},
                       **({"nodeName": e.node} if e.node else {}),
                       **({"targetRef": {"kind": "Pod", "namespace": s.namespace, "name": e.pod.split("/", 1)[1]}}
                          if e.pod else {})} for e in spe.endpoints],
        "ports": [{"name": p.name or "", "port": spe.endpoints[0].port if spe.endpoints else None,
                   "protocol": p.protocol}],
    }

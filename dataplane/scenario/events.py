"""Events on a timeline: scale a Deployment, delete a pod, flip readiness, roll out.

The runner plays the controllers a real cluster would have: the ReplicaSet controller (new pods,
spread over nodes, with fresh names; the pods it removes go newest first), the kubelet (CNI ADD,
start, readiness probes; on deletion: stop, CNI DEL, remove the sandbox) and the EndpointSlice
controller plus kube-proxy (after every change the endpoints are derived again and the node
rules re-synced). A terminating pod leaves the endpoints and the rules *before* its workload is
stopped, with a short grace period, so new connections never go to a dead IP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dataplane.netns import namespace
from dataplane.scenario import build, spec
from dataplane.scenario.topology import PodPlan, prefix, replica_name
from dataplane.scenario.workload import CONTROL_PREFIX

if TYPE_CHECKING:
    from dataplane.scenario.runtime import ScenarioRun

TERMINATION_GRACE = 0.2   # seconds between leaving the rules and the workload stopping


@dataclass(frozen=True)
class Applied:
    at: float
    event: str
    detail: str

    def to_json(self) -> dict:
        return {"at": round(self.at, 3), "event": self.event, "detail": self.detail}


class Controller:
    def __init__(self, run: ScenarioRun) -> None:
        self.run = run
        self.next_index = len(run.topology.pods) + 1
        self.revisions: dict[str, int] = {}
        self.replica_counter: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def _deployment(self, namespace_: str, name: str) -> spec.Deployment:
        return next(d for d in self.run.scenario.deployments if (d.namespace, d.name) == (namespace_, name))

    def _owned(self, d: spec.Deployment) -> list[build.RunningPod]:
        return [p for p in self.run.pods.values() if p.plan.namespace == d.namespace and p.plan.owner == d.name]

    def _least_loaded_node(self) -> str:
        load = {n.name: 0 for n in self.run.topology.nodes}
        for p in self.run.pods.values():
            load[p.plan.node] += 1
        return min(load, key=lambda n: (load[n], list(load).index(n)))

    def _new_pods(self, d: spec.Deployment, count: int) -> list[build.RunningPod]:
        revision = self.revisions.get(d.name, 0)
        plans = []
        for _ in range(count):
            k = self.replica_counter.get(d.name, d.replicas)
            self.replica_counter[d.name] = k + 1
            plans.append(PodPlan(replica_name(d, k, revision), d.namespace, d.template.node_name or self._least_loaded_node(),
                                 f"{prefix(self.run.run_id)}-p{self.next_index}", d.template, d.name))
            self.next_index += 1
        return self.start(plans)

    def start(self, plans: list[PodPlan]) -> list[build.RunningPod]:
        """kubelet: sandbox, CNI ADD, workload, readiness; then the pods count as running."""
        run, state = self.run, self.run.state
        assert state is not None and run.cni is not None
        started = []
        for plan in plans:
            build.create_netns(state, plan.netns)
            started.append(build.attach_pod(run.topology, run.cni, plan, run.conflists[plan.node],
                                            f"dp{run.run_id}-{int(plan.netns.rsplit('-p', 1)[1]):04d}"))
            run.pods[plan.key] = started[-1]
            run.labels_seen[plan.name] = plan.labels
        build.start_workloads(state, started, dns_zone=run.dns_zone)
        for pod in started:
            run.probe(pod)
        return started

    def terminate(self, pods: list[build.RunningPod]) -> None:
        """Out of the endpoints and rules first, then stop, CNI DEL and remove the sandbox."""
        run = self.run
        for pod in pods:
            run.pods.pop(pod.plan.key, None)
        run.resync()
        time.sleep(TERMINATION_GRACE)
        assert run.state is not None and run.cni is not None
        for pod in pods:
            build.remove_pod(run.topology, run.state, run.cni, pod, run.conflists[pod.plan.node])

    def _find_pod(self, namespace_: str, name: str) -> build.RunningPod:
        direct = self.run.pods.get(f"{namespace_}/{name}")
        if direct is not None:
            return direct
        owned = [p for p in self.run.pods.values() if p.plan.namespace == namespace_ and p.plan.owner == name]
        if not owned:
            raise LookupError(f"no running pod {namespace_}/{name}")
        return owned[0]

    # -- events ----------------------------------------------------------------------------------
    def apply(self, ev: spec.Event) -> str:
        if ev.kind == "scale":
            return self.scale(self._deployment(ev.namespace, ev.target), int(ev.value or 0))
        if ev.kind == "deletePod":
            return self.delete_pod(ev.namespace, ev.target)
        if ev.kind == "readiness":
            return self.set_readiness(ev.namespace, ev.target, bool(ev.value))
        if ev.kind == "rollout":
            return self.rollout(self._deployment(ev.namespace, ev.target))
        raise ValueError(ev.kind)

    def scale(self, d: spec.Deployment, replicas: int) -> str:
        owned = self._owned(d)
        if replicas > len(owned):
            new = self._new_pods(d, replicas - len(owned))
            self.run.resync()
            return f"{d.name}: {len(owned)} -> {replicas} replicas, started " + ", ".join(
                f"{p.plan.name} ({p.ip})" for p in new)
        gone = sorted(owned, key=lambda p: p.plan.netns, reverse=True)[: len(owned) - replicas]
        self.terminate(gone)
        return f"{d.name}: {len(owned)} -> {replicas} replicas, removed " + ", ".join(p.plan.name for p in gone)

    def delete_pod(self, namespace_: str, name: str) -> str:
        pod = self._find_pod(namespace_, name)
        self.terminate([pod])
        detail = f"deleted {pod.plan.name} ({pod.ip})"
        if pod.plan.owner:
            new = self._new_pods(self._deployment(namespace_, pod.plan.owner), 1)[0]
            self.run.resync()
            detail += f"; replacement {new.plan.name} ({new.ip})"
        return detail

    def set_readiness(self, namespace_: str, name: str, ready: bool) -> str:
        pod = self._find_pod(namespace_, name)
        probe = pod.plan.template.readiness
        if probe is not None and probe.kind == "httpGet":
            path = CONTROL_PREFIX + ("" if ready else probe.path)
            _http_get(self.run.topology.node(pod.plan.node).netns, pod.ip, _probe_port(pod, probe), path)
            self.run.probe(pod)
        else:
            pod.ready = ready  # no HTTP probe to fail: act as a readiness gate would
        self.run.resync()
        return f"{pod.plan.name} ready={pod.ready}"

    def rollout(self, d: spec.Deployment) -> str:
        """Replace every pod, surge 1 / maxUnavailable 0: a new pod is ready before an old one goes."""
        self.revisions[d.name] = self.revisions.get(d.name, 0) + 1
        old = self._owned(d)
        for pod in old:
            self._new_pods(d, 1)
            self.run.resync()
            self.terminate([pod])
        return f"{d.name}: replaced " + ", ".join(p.plan.name for p in old)


def _probe_port(pod: build.RunningPod, probe: spec.Probe) -> int:
    if isinstance(probe.port, int):
        return probe.port
    return next(p.port for p in pod.plan.template.ports if p.name == probe.port)


def _http_get(netns: str, ip: str, port: int, path: str) -> None:
    import socket

    with namespace.entered(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect((ip, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        s.recv(4096)
    finally:
        s.close()

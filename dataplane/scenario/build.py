"""Turning a Topology into namespaces, links, routes, CNI attachments and workload processes.

Every object is written to the run's state file before it is created (state.RunState.intend),
so a killed run can be cleaned from the record alone. Links live inside the scenario's own
namespaces (nothing in the root namespace), so removing the namespaces removes them.

Pod network designs, all on one underlay bridge (192.168.100.0/24) in the underlay namespace:
- host-gw: each node routes every other node's podCIDR via that node's underlay IP.
- vxlan:   a `vxlan0` device per node (VNI 1, UDP 4789 over the underlay); routes to other
           podCIDRs go via the peer's overlay address, with static ARP and FDB entries
           (flannel's scheme), so no flooding or learning is needed.
- l2:      the nodes' pod bridges (cni0) are joined into one switched segment (a second bridge in
           the underlay namespace) and other podCIDRs are on-link on cni0; replies crossing a
           node's bridge see its conntrack through br_netfilter, as on a real bridged node.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass

from dataplane.netns import link, namespace
from dataplane.scenario import cni, topology as topo
from dataplane.scenario.state import RunState, die_with_parent, process_start_time
from dataplane.scenario.topology import NodePlan, PodPlan, Topology

L2_SEGMENT_BRIDGE = "pods0"


class BuildError(RuntimeError):
    """Building the cluster failed; the message names the object."""


def ip_batch(netns: str, lines: list[str], tool: str = "ip") -> None:
    if not lines:
        return
    res = namespace.run(netns, [tool, "-batch", "-"], input="\n".join(lines) + "\n", check=False)
    if res.returncode != 0:
        raise BuildError(f"`{tool}` in {netns} failed: {res.stderr.strip()[:400]}")


def sysctl(netns: str, values: dict[str, str]) -> None:
    with namespace.entered(netns):
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)


def create_netns(state: RunState, name: str) -> None:
    """Record, then create. A name already taken is never recorded (so never removed by us)."""
    if namespace.exists(name):
        raise BuildError(f"network namespace {name} already exists; it is not this run's and is left alone")
    record = state.intend("netns", name=name)
    try:
        namespace.create(name)
    except FileExistsError:
        state.records.remove(record)
        state.save()
        raise BuildError(f"network namespace {name} appeared while this run was creating it; left alone") from None


def build_network(t: Topology, state: RunState) -> None:
    """Underlay, nodes, the external client and the pod-network design."""
    create_netns(state, t.underlay_netns)
    link.add_bridge(topo.UNDERLAY_BRIDGE, netns=t.underlay_netns)
    if t.design == "l2":
        link.add_bridge(L2_SEGMENT_BRIDGE, netns=t.underlay_netns)
    create_netns(state, t.external_netns)
    link.add_veth("eth0", "extup", netns=t.external_netns, peer_netns=t.underlay_netns)
    link.set_master("extup", topo.UNDERLAY_BRIDGE, netns=t.underlay_netns)
    ip_batch(t.external_netns, ["addr add 192.168.100.2/24 dev eth0"])
    for node in t.nodes:
        create_netns(state, node.netns)
        # icmp_ratelimit 0: the runner's bursts from one client would otherwise meet the kernel's
        # per-destination ICMP token bucket (1/s, burst 6) and turn later REJECTs into timeouts.
        sysctl(node.netns, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                            "net.ipv4.conf.default.rp_filter": "0", "net.ipv4.icmp_ratelimit": "0"})
        link.add_veth(topo.NODE_UPLINK, node.uplink_peer, netns=node.netns, peer_netns=t.underlay_netns)
        link.set_master(node.uplink_peer, topo.UNDERLAY_BRIDGE, netns=t.underlay_netns)
        # A default route, as real nodes have: traffic to a ClusterIP without endpoints then reaches
        # the FORWARD chain (and kube-proxy's REJECT) instead of failing route lookup.
        ip_batch(node.netns, [f"addr add {node.ip}/24 dev {topo.NODE_UPLINK}",
                              f"route add default via {topo.UNDERLAY_ROUTER_IP} dev {topo.NODE_UPLINK}"])
    for node in t.nodes:
        others = [n for n in t.nodes if n is not node]
        if t.design == "host-gw":
            ip_batch(node.netns, [f"route add {o.pod_cidr} via {o.ip} dev {topo.NODE_UPLINK}" for o in others])
        elif t.design == "vxlan":
            _vxlan(node, others)
        elif t.design == "l2":
            _l2(t, node, others)


def _vxlan(node: NodePlan, others: list[NodePlan]) -> None:
    ip_batch(node.netns, [
        f"link add vxlan0 type vxlan id {topo.VXLAN_ID} local {node.ip} dev {topo.NODE_UPLINK} "
        f"dstport {topo.VXLAN_PORT} nolearning",
        f"link set vxlan0 address {node.vxlan_mac} mtu 1450 up",
        f"addr add {node.vxlan_ip}/32 dev vxlan0",
        *(f"neigh add {o.vxlan_ip} lladdr {o.vxlan_mac} dev vxlan0 nud permanent" for o in others),
        *(f"route add {o.pod_cidr} via {o.vxlan_ip} dev vxlan0 onlink" for o in others),
    ])
    ip_batch(node.netns, [f"fdb append {o.vxlan_mac} dev vxlan0 dst {o.ip}" for o in others], tool="bridge")


def _l2(t: Topology, node: NodePlan, others: list[NodePlan]) -> None:
    """Pre-create cni0 (the bridge plugin adopts an existing bridge) and plug it into the segment."""
    link.add_bridge(topo.POD_BRIDGE, netns=node.netns)
    seg = f"n{node.index}seg"
    link.add_veth("l2seg", seg, netns=node.netns, peer_netns=t.underlay_netns)
    link.set_master(seg, L2_SEGMENT_BRIDGE, netns=t.underlay_netns)
    link.set_master("l2seg", topo.POD_BRIDGE, netns=node.netns)
    prefix_len = node.pod_cidr.split("/")[1]
    ip_batch(node.netns, [f"addr add {node.pod_gateway}/{prefix_len} dev {topo.POD_BRIDGE}",
                          *(f"route add {o.pod_cidr} dev {topo.POD_BRIDGE}" for o in others)])


def external_routes(t: Topology, via: str, addresses: list[str]) -> None:
    """The external client reaches LB and external IPs through one node (like MetalLB's L2 mode)."""
    ip_batch(t.external_netns, [f"route replace {a}/32 via {via}" for a in addresses])


# ---------------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------------
@dataclass
class RunningPod:
    plan: PodPlan
    ip: str
    attachment: cni.Attachment
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False


def add_pod(t: Topology, state: RunState, runtime: cni.Runtime, pod: PodPlan, conflist: dict,
            container_id: str) -> RunningPod:
    """Create the pod's namespace (the sandbox) and run CNI ADD for it."""
    create_netns(state, pod.netns)
    return attach_pod(t, runtime, pod, conflist, container_id)


def attach_pod(t: Topology, runtime: cni.Runtime, pod: PodPlan, conflist: dict, container_id: str) -> RunningPod:
    """CNI ADD into an existing pod namespace (thread-safe: runs in the calling thread's netns)."""
    node = t.node(pod.node)
    try:
        att = runtime.add(conflist, node.netns, container_id, namespace.path_of(pod.netns),
                          pod=(pod.namespace, pod.name))
    except cni.CniError as exc:
        raise BuildError(f"pod {pod.key} on {pod.node}: {exc}") from None
    return RunningPod(pod, att.ip, att)


def remove_pod(t: Topology, state: RunState, runtime: cni.Runtime, pod: RunningPod, conflist: dict) -> None:
    """Kubelet's order: stop the workload, CNI DEL, then remove the sandbox's namespace."""
    stop_workload(state, pod)
    runtime.delete(conflist, t.node(pod.plan.node).netns, pod.attachment, pod=(pod.plan.namespace, pod.plan.name))
    namespace.remove(pod.plan.netns)
    state.records[:] = [r for r in state.records if not (r["kind"] == "netns" and r["name"] == pod.plan.netns)]
    state.save()


def workload_argv(pod: PodPlan, dns_zone: str | None = None) -> list[str]:
    if pod.role == "dns":
        return [sys.executable, "-m", "dataplane.scenario.dns", "--zone", dns_zone or "/nonexistent"]
    ports = sorted({p.port for p in pod.template.ports}) or [80]
    argv = [sys.executable, "-m", "dataplane.scenario.workload", "--pod", pod.name]
    for p in ports:
        argv += ["--tcp", str(p), "--udp", str(p)]
    probe = pod.template.readiness
    if pod.template.fail_readiness:
        argv += ["--fail-readiness", probe.path if probe and probe.kind == "httpGet" else "/healthz"]
    return argv


def start_workloads(state: RunState, pods: list[RunningPod], timeout: float = 30.0, dns_zone: str | None = None) -> None:
    """Start one server per pod (all at once), record each PID, then wait for every `ready`."""
    log_dir = os.path.join(state.directory, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for pod in pods:
        record = state.intend("process", pod=pod.plan.key, pid=None, start=None)
        with open(os.path.join(log_dir, f"{pod.plan.netns}.log"), "wb") as log:
            pod.process = subprocess.Popen(namespace.command(pod.plan.netns, workload_argv(pod.plan, dns_zone)),
                                           stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                           start_new_session=True, preexec_fn=die_with_parent,
                                           env={**os.environ, "PYTHONPATH": _pythonpath()})
        state.complete(record, pid=pod.process.pid, start=process_start_time(pod.process.pid))
    deadline = time.monotonic() + timeout
    for pod in pods:
        assert pod.process is not None and pod.process.stdout is not None
        remaining = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([pod.process.stdout], [], [], remaining)
        line = pod.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise BuildError(f"the workload of pod {pod.plan.key} did not start (see "
                             f"{os.path.join(log_dir, pod.plan.netns + '.log')})")


def stop_workload(state: RunState, pod: RunningPod) -> None:
    from dataplane.scenario.state import stop_process_group

    if pod.process is None:
        return
    stop_process_group(pod.process.pid, process_start_time(pod.process.pid))
    pod.process.wait()
    if pod.process.stdout:
        pod.process.stdout.close()
    state.records[:] = [r for r in state.records if not (r["kind"] == "process" and r.get("pid") == pod.process.pid)]
    state.save()
    pod.process = None


def _pythonpath() -> str:
    import dataplane

    root = os.path.dirname(os.path.dirname(os.path.abspath(dataplane.__file__)))
    extra = os.environ.get("PYTHONPATH")
    return f"{root}:{extra}" if extra else root

"""Running a scenario: build the cluster, program the service dataplane, send traffic, check, tear down.

`ScenarioRun` is Mininet's `Mininet` to topology.py's `Topo`. Teardown runs on normal exit, on
errors, on Ctrl-C (SIGINT) and on SIGTERM; a SIGKILLed run is cleaned by `dataplane scenario clean`
from its state file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dataplane.netns import namespace
from dataplane.scenario import build, capture, cni, dataplanes, dns, endpoints as eps, expect, spec, traffic as tr
from dataplane.scenario.state import RunState
from dataplane.scenario.topology import ServicePlan, Topology, plan


CNI_PARALLELISM = 4


class RunError(RuntimeError):
    """The scenario could not run (not a failed expectation): a sentence saying why."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; raised in the main thread so teardown runs."""


@dataclass
class Report:
    scenario: str
    file: str
    run_id: str
    settings: dict
    nodes: list[dict] = field(default_factory=list)
    pods: list[dict] = field(default_factory=list)
    services: list[dict] = field(default_factory=list)
    endpoint_slices: list[dict] = field(default_factory=list)
    flows: list[tr.FlowResult] = field(default_factory=list)
    verdicts: list[expect.Verdict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    traces: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors and all(v.passed for v in self.verdicts)

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "file": self.file, "runId": self.run_id, "passed": self.passed,
                "settings": self.settings, "nodes": self.nodes, "pods": self.pods, "services": self.services,
                "endpointSlices": self.endpoint_slices, "flows": [f.to_json() for f in self.flows],
                "expectations": [v.to_json() for v in self.verdicts], "events": self.events, "traces": self.traces, "timings": self.timings,
                "errors": self.errors}


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """During teardown a second Ctrl-C must not leave half the cluster behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class ScenarioRun:
    def __init__(self, scenario: spec.Scenario, *, proxy_mode: str | None = None, dataplane: str | None = None,
                 pod_network: str | None = None, run_id: str | None = None, pcap_dir: str | None = None,
                 trace: tuple[str, ...] = (), progress: Callable[[str], None] | None = None) -> None:
        if pod_network:
            scenario = dataclasses.replace(scenario, cluster=dataclasses.replace(scenario.cluster, pod_network=pod_network))
        self.scenario = scenario
        self.proxy_mode = proxy_mode or scenario.cluster.proxy.mode
        self.dataplane_name = dataplane or scenario.cluster.dataplane
        self.run_id = run_id or secrets.token_hex(3)
        self.progress = progress or (lambda msg: None)
        self.topology: Topology = plan(scenario, self.run_id)
        self.state: RunState | None = None
        self.pods: dict[str, build.RunningPod] = {}
        self.conflists: dict[str, dict] = {}
        self.cni: cni.Runtime | None = None
        self.dns_zone: str | None = None
        self.capture = capture.NodeCapture(pcap_dir) if pcap_dir else None
        unknown = sorted(set(trace) - {t.name for t in scenario.traffic})
        if unknown:
            raise RunError(f"--trace: no traffic named {', '.join(unknown)} in {scenario.file}")
        self.trace = set(trace)
        self.traces: dict[str, dict[str, list[str]]] = {}
        self.labels_seen: dict[str, dict[str, str]] = {p.name: p.labels for p in self.topology.pods}
        self.endpoints: dict[str, list[eps.ServicePortEndpoints]] = {}
        self.dataplane: dataplanes.ServiceDataplane | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def execute(self) -> Report:
        """Build, send, check and tear down; the report says what happened, pass or fail."""
        report = Report(self.scenario.name, self.scenario.file, self.run_id, self._settings())
        t0 = time.monotonic()
        try:
            with _signals_raise():
                self.build()
                report.timings["buildSeconds"] = round(time.monotonic() - t0, 3)
                self._describe(report)
                t1 = time.monotonic()
                report.flows = self.run_timeline(report)
                report.timings["trafficSeconds"] = round(time.monotonic() - t1, 3)
                report.verdicts = self.check(report.flows)
                self._describe(report)   # again: events may have changed pods and endpoints
                report.traces = self.traces
        except (Interrupted, KeyboardInterrupt) as exc:
            report.errors.append(f"interrupted ({exc or 'SIGINT'}); the cluster was torn down")
            raise
        finally:
            t2 = time.monotonic()
            errors = self.teardown()
            report.timings["teardownSeconds"] = round(time.monotonic() - t2, 3)
            report.errors.extend(errors)
        return report

    def _settings(self) -> dict:
        c = self.scenario.cluster
        return {"proxyMode": self.proxy_mode, "dataplane": self.dataplane_name, "podNetwork": c.pod_network,
                "iptablesLayout": c.proxy.iptables_layout, "iptablesBackend": c.proxy.iptables_backend,
                "clusterCIDR": c.cluster_cidr, "serviceCIDR": c.service_cidr}

    def build(self) -> None:
        c = self.scenario.cluster
        try:
            self.dataplane = dataplanes.make(self.dataplane_name, self.proxy_mode, cluster_cidr=c.cluster_cidr,
                                             service_cidr=c.service_cidr,
                                             layout=c.proxy.iptables_layout, backend=c.proxy.iptables_backend,
                                             masquerade_all=c.proxy.masquerade_all,
                                             ipvs_scheduler=c.proxy.ipvs_scheduler, pod_network=c.pod_network)
        except dataplanes.DataplaneError as exc:
            raise RunError(str(exc)) from None
        t = self.topology
        self.state = RunState.create(self.run_id, os.path.abspath(self.scenario.file))
        self.progress(f"run {self.run_id}: building {len(t.nodes)} node(s), {len(t.pods)} pod(s), design {t.design}")
        errors: list[str] = []
        try:
            self.cni = cni.Runtime(self.state, use_project_plugins=c.cni_plugins == "project")
            build.build_network(t, self.state)
            for node in t.nodes:
                lease_dir = os.path.join(self.state.directory, "ipam", node.name)
                template = c.cni or cni.default_conflist(mtu=1450 if t.design == "vxlan" else None)
                self.conflists[node.name] = cni.node_conflist(template, node.pod_cidr, lease_dir)
            # Sandboxes first (recorded one by one), then CNI ADDs a few at a time, as kubelet
            # starts pods in parallel; the plugins serialize where they must (host-local's lock).
            for pod in t.pods:
                build.create_netns(self.state, pod.netns)
            with concurrent.futures.ThreadPoolExecutor(CNI_PARALLELISM) as pool:
                futures = {pod.key: pool.submit(build.attach_pod, t, self.cni, pod, self.conflists[pod.node],
                                                f"dp{self.run_id}-{i:04d}") for i, pod in enumerate(t.pods, start=1)}
                for key, future in futures.items():
                    try:
                        self.pods[key] = future.result()
                    except build.BuildError as exc:
                        errors.append(str(exc))
            if errors:
                raise build.BuildError("; ".join(errors))
            self.progress(f"run {self.run_id}: pods wired through CNI, starting workloads")
            if spec.uses_dns(self.scenario):
                os.makedirs(os.path.join(self.state.directory, "dns"))
                self.dns_zone = os.path.join(self.state.directory, "dns", "zone.json")
                dns.write_zone(self.dns_zone, {})
            build.start_workloads(self.state, list(self.pods.values()), dns_zone=self.dns_zone)
            self.probe_readiness()
            ext = [ip for s in t.services for ip in (*s.service.load_balancer_ips, *s.service.external_ips)]
            if ext:
                build.external_routes(t, t.nodes[0].ip, ext)
            self.dataplane.setup(t)
            self.resync()
            if self.capture is not None:
                for node in t.nodes:
                    self.progress(f"capturing node {node.name} into {self.capture.start(node.name, node.netns)}")
        except (build.BuildError, dataplanes.DataplaneError, cni.CniError) as exc:
            raise RunError(str(exc)) from None

    def _pod_rows(self) -> list[tuple]:
        return [(p.plan, p.ip, p.ready) for p in self.pods.values()]

    def probe_readiness(self) -> None:
        for pod in self.pods.values():
            self.probe(pod)

    def probe(self, pod: build.RunningPod) -> None:
        """kubelet's job: run the readiness probe from the pod's node; pods without one are ready."""
        probe = pod.plan.template.readiness
        pod.ready = probe is None or _probe(self.topology.node(pod.plan.node).netns, pod, probe)

    def resync(self) -> None:
        """EndpointSlice controller + kube-proxy (+ kube-dns): derive endpoints again, sync every node."""
        self.endpoints = {s.key: eps.derive(s, self._pod_rows(), self.scenario.endpoint_slices)
                          for s in self.topology.services}
        if self.dns_zone:
            dns.write_zone(self.dns_zone, dns.records([(s.service, s.cluster_ip) for s in self.topology.services],
                                                      self.endpoints))
        assert self.dataplane is not None
        self.dataplane.sync(self.topology, self.endpoints)

    def teardown(self) -> list[str]:
        """CNI DEL for every pod (as the runtime would), then remove everything recorded."""
        if self.state is None:
            return []
        errors: list[str] = []
        with _signals_ignored():
            close = getattr(self.dataplane, "close", None)   # the emulated dataplane's TUN readers
            if close is not None:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - report, and still remove the namespaces
                    errors.append(f"stopping the service dataplane: {exc}")
            if self.capture is not None:
                self.capture.stop()
            for pod in list(self.pods.values()):
                try:
                    build.stop_workload(self.state, pod)
                except Exception as exc:  # noqa: BLE001 - report, and still remove the namespaces
                    errors.append(f"stopping the workload of pod {pod.plan.key}: {exc}")

            def delete(pod: build.RunningPod) -> None:
                assert self.cni is not None
                self.cni.delete(self.conflists[pod.plan.node], self.topology.node(pod.plan.node).netns,
                                pod.attachment, pod=(pod.plan.namespace, pod.plan.name))

            with concurrent.futures.ThreadPoolExecutor(CNI_PARALLELISM) as pool:
                for pod, future in [(p, pool.submit(delete, p)) for p in self.pods.values()]:
                    try:
                        future.result()
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"CNI DEL of pod {pod.plan.key}: {exc}")
            self.pods.clear()
            if self.cni is not None:
                self.cni.close()
            errors += self.state.undo_all()
        return errors

    # -- traffic ---------------------------------------------------------------------------------
    def _source(self, t: spec.Traffic) -> tuple[str, str]:
        if t.source == "external":
            return self.topology.external_netns, spec.EXTERNAL_CLIENT_IP
        kind, _, name = t.source.partition("/")
        for pod in self.pods.values():
            p = pod.plan
            if p.namespace == t.namespace and ((kind == "pod" and p.name == name) or (kind == "deployment" and p.owner == name)):
                return p.netns, pod.ip
        raise RunError(f"traffic {t.name}: source {t.source} has no running pod")

    def _service_port(self, t: spec.Traffic) -> tuple[ServicePlan, spec.ServicePort, int | None]:
        tg = t.target
        svc = self.topology.service(tg.namespace, tg.service or "")
        assert svc is not None  # checked when the file was parsed
        want = "UDP" if t.protocol == "udp" else "TCP"
        for port, node_port in zip(svc.service.ports, svc.node_ports):
            if (tg.port is None or tg.port in (port.port, port.name)) and port.protocol == want:
                return svc, port, node_port
        raise RunError(f"{self.scenario.file}:{t.line}: traffic {t.name}: Service {svc.key} has no {want} port "
                       f"{tg.port if tg.port is not None else ''}".rstrip())

    def targets(self, t: spec.Traffic) -> list[tuple[str, int]]:
        tg = t.target
        if tg.address is not None:
            assert isinstance(tg.port, int)
            return [(tg.address, tg.port)]
        if tg.pod is not None:
            assert isinstance(tg.port, int)
            running = [p for p in self.pods.values() if p.plan.namespace == tg.namespace
                       and tg.pod in (p.plan.name, p.plan.owner)]
            return [(p.ip, tg.port) for p in running]
        svc, port, node_port = self._service_port(t)
        s = svc.service
        if tg.via == "clusterIP":
            if svc.cluster_ip is None:
                raise RunError(f"traffic {t.name}: Service {s.name} has no ClusterIP (headless: use `host`)")
            return [(svc.cluster_ip, port.port)]
        if tg.via == "nodePort":
            assert node_port is not None
            names = tg.nodes or tuple(n.name for n in self.topology.nodes)
            return [(self.topology.node(n).ip, node_port) for n in names]
        ips = s.load_balancer_ips if tg.via == "loadBalancer" else s.external_ips
        return [(ip, port.port) for ip in ips]

    def run_timeline(self, report: Report) -> list[tr.FlowResult]:
        """Traffic in a worker thread while the main thread applies the events at their times."""
        if not self.scenario.events:
            return self.send_traffic()
        from dataplane.scenario.events import Applied, Controller

        controller = Controller(self)
        flows: list[tr.FlowResult] = []
        failure: list[BaseException] = []

        def traffic() -> None:
            try:
                flows.extend(self.send_traffic())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                failure.append(exc)

        worker = threading.Thread(target=traffic, name="scenario-traffic", daemon=True)
        t0 = time.monotonic()
        worker.start()
        for ev in self.scenario.events:
            while time.monotonic() < t0 + ev.at and worker.is_alive():
                time.sleep(min(0.05, max(0.0, t0 + ev.at - time.monotonic())))
            started = time.monotonic() - t0
            try:
                detail = controller.apply(ev)
            except (build.BuildError, cni.CniError, dataplanes.DataplaneError, LookupError) as exc:
                raise RunError(f"{self.scenario.file}:{ev.line}: event {ev.kind} {ev.target} failed: {exc}") from None
            self.progress(f"event at {started:.2f} s: {ev.kind} {ev.target}: {detail}")
            report.events.append(Applied(started, ev.kind, detail).to_json())
        while worker.is_alive():
            worker.join(0.1)
        if failure:
            raise failure[0]
        return flows

    def resolv_conf(self, t: spec.Traffic) -> dns.ResolvConf:
        """The source pod's ClusterFirst resolv.conf, written into the run directory as kubelet would."""
        dns_svc = self.topology.service(dns.KUBE_DNS_NAMESPACE, dns.KUBE_DNS_NAME)
        assert dns_svc is not None and dns_svc.cluster_ip and self.state is not None
        conf = dns.ResolvConf.cluster_first(t.namespace, dns_svc.cluster_ip)
        folder = os.path.join(self.state.directory, "resolv", f"{t.namespace}_{t.source.replace('/', '_')}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "resolv.conf"), "w") as f:
            f.write(conf.text())
        return conf

    def _send_to_host(self, t: spec.Traffic, netns: str, client_ip: str) -> list[tr.FlowResult]:
        tg = t.target
        assert tg.host is not None and isinstance(tg.port, int)
        try:
            answer = dns.resolve(netns, tg.host, self.resolv_conf(t), tcp=t.dns_transport == "tcp", timeout=t.timeout * 2)
        except OSError as exc:
            answer = dns.Answer(tg.host, (), (), f"error: {tr._error_name(exc)}")
        flows = []
        for ip in answer.addresses or ("",):
            if ip:
                self.progress(f"traffic {t.name}: {tg.host} -> {ip} ({t.dns_transport} DNS); {t.requests} request(s)")
                flow = tr.send(t.name, t.source, netns, client_ip, ip, tg.port, protocol=t.protocol, mode=t.mode,
                               requests=t.requests, timeout=t.timeout, rate=t.rate)
            else:
                flow = tr.FlowResult(t.name, t.source, client_ip, f"{tg.host}:{tg.port}", t.protocol, t.mode,
                                     [tr.Outcome(False, error=f"dns {answer.rcode.lower()}")] * t.requests)
            flow.host, flow.resolved, flow.cnames = answer.name, list(answer.addresses), list(answer.cnames)
            flows.append(flow)
        return flows

    def send_traffic(self) -> list[tr.FlowResult]:
        flows = []
        for t in self.scenario.traffic:
            netns, client_ip = self._source(t)
            if t.name in self.trace:
                from dataplane.scenario.trace import KernelTrace

                assert self.state is not None
                make_tracer = getattr(self.dataplane, "tracer", None)   # the emulated dataplane traces its engine
                tracer = make_tracer(client_ip) if make_tracer else KernelTrace(self.state, self.topology.nodes, client_ip)
                tracer.start()
                try:
                    flows += self._send_one(t, netns, client_ip)
                finally:
                    self.traces[t.name] = tracer.stop()
                continue
            flows += self._send_one(t, netns, client_ip)
        return flows

    def _send_one(self, t: spec.Traffic, netns: str, client_ip: str) -> list[tr.FlowResult]:
        if t.target.host is not None:
            return self._send_to_host(t, netns, client_ip)
        flows = []
        for ip, port in self.targets(t):
            self.progress(f"traffic {t.name}: {t.requests} {t.protocol} request(s) {t.source} -> {ip}:{port}")
            flows.append(tr.send(t.name, t.source, netns, client_ip, ip, port, protocol=t.protocol,
                                 mode=t.mode, requests=t.requests, timeout=t.timeout, rate=t.rate))
        return flows

    def check(self, flows: list[tr.FlowResult]) -> list[expect.Verdict]:
        labels = {**self.labels_seen, **{p.plan.name: p.plan.labels for p in self.pods.values()}}
        behind: dict[str, list[str]] = {}
        for t in self.scenario.traffic:
            if t.target.service is None:
                continue
            svc, port, _ = self._service_port(t)
            for spe in self.endpoints.get(svc.key, []):
                if spe.port == port:
                    behind[t.name] = [e.pod.split("/", 1)[1] for e in spe.ready if e.pod]
        zone_answers = {}
        for svc in self.topology.services:
            name = f"{svc.service.name}.{svc.service.namespace}.svc.{dns.CLUSTER_DOMAIN}"
            ready = sorted({e.ip for spe in self.endpoints.get(svc.key, []) for e in spe.ready})
            zone_answers[name] = {"clusterIP": [svc.cluster_ip] if svc.cluster_ip else [], "endpoints": ready}
        ctx = expect.Context(labels, behind, zone_answers)
        verdicts = []
        for e in self.scenario.expect:
            verdicts += expect.evaluate(e, [f for f in flows if f.traffic == e.traffic], ctx)
        return verdicts

    def _describe(self, report: Report) -> None:
        t = self.topology
        report.nodes = [{"name": n.name, "ip": n.ip, "podCIDR": n.pod_cidr, "netns": n.netns} for n in t.nodes]
        report.pods = [{"name": p.plan.name, "namespace": p.plan.namespace, "node": p.plan.node, "ip": p.ip,
                        "ready": p.ready, "netns": p.plan.netns} for p in self.pods.values()]
        report.services = [{"name": s.service.name, "namespace": s.service.namespace, "type": s.service.type,
                            "clusterIP": s.cluster_ip, "nodePorts": [p for p in s.node_ports if p]}
                           for s in t.services]
        report.endpoint_slices = [eps.to_manifest(spe) for lst in self.endpoints.values() for spe in lst]
        if self.dataplane is not None:
            report.settings.update(self.dataplane.describe())
        if self.capture is not None:
            report.settings["pcaps"] = [os.path.join(self.capture.directory, f"{n.name}.pcap") for n in t.nodes]
        if self.cni is not None and t.nodes:
            report.settings["cniPlugins"] = self.cni.resolved(self.conflists[t.nodes[0].name])


def _probe(node_netns: str, pod: build.RunningPod, probe: spec.Probe) -> bool:
    port = probe.port
    if isinstance(port, str):
        port = next((p.port for p in pod.plan.template.ports if p.name == port), 0)
        if not port:
            return False
    with namespace.entered(node_netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((pod.ip, port))
        if probe.kind == "tcpSocket":
            return True
        s.sendall(f"GET {probe.path} HTTP/1.1\r\nHost: {pod.ip}\r\nConnection: close\r\n\r\n".encode())
        status = s.recv(64).split(b" ", 2)
        return len(status) > 1 and status[1][:1] in (b"2", b"3")
    except OSError:
        return False
    finally:
        s.close()

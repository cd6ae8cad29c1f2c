"""The scenario file: Kubernetes manifests plus `cluster:`, `traffic:` and `expect:` sections.

A scenario file is a YAML stream. Each document is either a Kubernetes object (Node, Pod,
Deployment, Service, EndpointSlice, or a `List` of them) or the scenario document, the one
without `kind`, holding `name`, `description`, `cluster`, `traffic` and `expect`.

Declarative only (Mininet's `Topo`, not its `Mininet`): parsing has no side effects. Every error
names the file and line; unknown fields are rejected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dataplane.scenario.schema import Field, SpecError, documents

PROXY_MODES = ("iptables", "ipvs", "nftables")
DATAPLANES = ("kernel", "emulated")
POD_NETWORKS = ("l2", "host-gw", "vxlan")
IPTABLES_LAYOUTS = ("modern", "classic")
IPTABLES_BACKENDS = ("nft", "legacy")
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP")
UNDERLAY = ipaddress.IPv4Network("192.168.100.0/24")
EXTERNAL_CLIENT_IP = "192.168.100.2"
DEFAULT_AFFINITY_TIMEOUT = 10800
NODE_PORT_RANGE = (30000, 32767)

# Fields of real manifests we accept but do not model (kubectl would accept them too).
_IGNORED_METADATA = {"annotations", "uid", "resourceVersion", "generation", "creationTimestamp",
                     "ownerReferences", "finalizers", "generateName", "managedFields"}
_IGNORED_CONTAINER = {"image", "imagePullPolicy", "command", "args", "env", "envFrom", "resources",
                      "volumeMounts", "workingDir", "securityContext", "livenessProbe", "startupProbe",
                      "lifecycle", "terminationMessagePath", "terminationMessagePolicy", "stdin", "tty"}
_IGNORED_POD_SPEC = {"restartPolicy", "terminationGracePeriodSeconds", "dnsPolicy", "serviceAccountName",
                     "serviceAccount", "securityContext", "schedulerName", "volumes", "tolerations",
                     "affinity", "nodeSelector", "hostname", "subdomain", "priority", "enableServiceLinks",
                     "automountServiceAccountToken", "initContainers"}
FAIL_READINESS_ANNOTATION = "scenario.dataplane.io/fail-readiness"


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxySettings:
    mode: str = "iptables"
    iptables_layout: str = "modern"       # kube-proxy >= 1.21 (masq rule in KUBE-SVC) or classic
    iptables_backend: str = "nft"         # which iptables-restore the kernel dataplane uses
    ipvs_scheduler: str = "rr"
    masquerade_all: bool = False


@dataclass(frozen=True)
class ClusterSettings:
    cni: dict | None = None               # a CNI conflist; None = the built-in bridge + host-local one
    cni_plugins: str = "project"          # project (ours first on CNI_PATH) | reference (Go plugins only)
    proxy: ProxySettings = ProxySettings()
    dataplane: str = "kernel"
    pod_network: str = "host-gw"
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    dns: bool = False


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidr: str
    internal_ip: str
    line: int = 0


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class Probe:
    kind: str                              # "httpGet" or "tcpSocket"
    port: int | str
    path: str = "/"


@dataclass(frozen=True)
class PodTemplate:
    labels: dict[str, str]
    ports: tuple[ContainerPort, ...]
    readiness: Probe | None = None
    fail_readiness: bool = False           # the workload answers its probe with 503
    node_name: str | None = None


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    template: PodTemplate
    owner: str | None = None               # the Deployment that made it
    line: int = 0


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    replicas: int
    selector: dict[str, str]
    template: PodTemplate
    line: int = 0


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    protocol: str = "TCP"
    name: str | None = None
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    type: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str] | None
    cluster_ip: str | None                 # None = allocate; "None" = headless
    session_affinity: bool = False
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    external_name: str | None = None
    line: int = 0

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


def uses_dns(sc: "Scenario") -> bool:
    return sc.cluster.dns or any(t.target.host for t in sc.traffic)


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    node_name: str | None = None
    pod: str | None = None


@dataclass(frozen=True)
class SlicePort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class EndpointSlice:
    name: str
    namespace: str
    service: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]
    line: int = 0


@dataclass(frozen=True)
class Target:
    """Where traffic goes: a Service reached one way (`via`), a pod's own IP, or a literal address."""

    service: str | None = None
    pod: str | None = None
    host: str | None = None                # a DNS name, resolved through the cluster DNS
    namespace: str = "default"
    port: int | str | None = None
    via: str = "clusterIP"                 # clusterIP | nodePort | loadBalancer | externalIP
    nodes: tuple[str, ...] | None = None   # nodePort: which node IPs (None = all)
    address: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Traffic:
    name: str
    source: str                            # "external", "pod/<name>" or "deployment/<name>"
    target: Target
    protocol: str = "tcp"                  # tcp | udp | http
    requests: int = 30
    mode: str = "new"                      # new connection per request, or keepalive
    timeout: float = 1.0
    rate: float | None = None              # requests per second; None = back to back
    dns_transport: str = "udp"             # how a `host` target is looked up: udp | tcp
    namespace: str = "default"
    line: int = 0


@dataclass(frozen=True)
class Event:
    """A change at `at` seconds after the traffic starts; endpoints and rules follow it.

    kind: `scale` (deployment, replicas), `deletePod` (pod: a pod name, or a Deployment's name for
    one of its pods), `readiness` (pod, ready), `rollout` (deployment: replace every pod, one at a
    time, surge 1, like `kubectl rollout restart`).
    """

    at: float
    kind: str
    target: str
    value: int | bool | None = None
    namespace: str = "default"
    line: int = 0


@dataclass(frozen=True)
class Distribution:
    tolerance: float
    by: str | None = None                  # a pod label; None = per pod
    weights: dict[str, float] | None = None


@dataclass(frozen=True)
class Expectation:
    traffic: str
    reachable: bool | None = None
    rejected: bool | None = None
    answered_by: dict[str, str] | None = None   # label selector every answering pod must match
    distribution: Distribution | None = None
    affinity: bool | None = None
    source: str | None = None                   # preserved | masqueraded
    resolves_to: str | None = None              # clusterIP | endpoints | a CNAME target
    line: int = 0


@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    description: str
    cluster: ClusterSettings
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    deployments: tuple[Deployment, ...]
    services: tuple[Service, ...]
    endpoint_slices: tuple[EndpointSlice, ...]
    traffic: tuple[Traffic, ...]
    expect: tuple[Expectation, ...] = field(default=())
    events: tuple[Event, ...] = field(default=())

    def service(self, namespace: str, name: str) -> Service | None:
        return next((s for s in self.services if s.namespace == namespace and s.name == name), None)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
def load(path: str) -> Scenario:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SpecError(path, 0, f"cannot read the scenario file: {exc.strerror}") from None
    return parse(text, path)


def parse(text: str, file: str = "<scenario>") -> Scenario:
    head: dict[str, Field] | None = None
    head_field: Field | None = None
    objects: dict[str, list[Field]] = {k: [] for k in ("Node", "Pod", "Deployment", "Service", "EndpointSlice")}
    for doc in documents(text, file):
        top = doc.mapping()
        if "kind" not in top:
            if head is not None:
                raise doc.error("a second scenario document (the one without `kind`); only one is allowed")
            head = doc.mapping({"name", "description", "cluster", "traffic", "expect", "events"})
            head_field = doc
            continue
        for obj in _expand_lists(doc):
            kind = obj.mapping()["kind"].str()
            if kind not in objects:
                raise obj.mapping()["kind"].error(
                    f"unsupported kind {kind!r} (supported: {', '.join(objects)}, List)")
            objects[kind].append(obj)
    if head is None:
        raise SpecError(file, 1, "no scenario document (a YAML document with `cluster`, `traffic`, `expect`)")
    assert head_field is not None

    cluster = _cluster(head["cluster"]) if "cluster" in head else ClusterSettings()
    nodes = tuple(_node(f) for f in objects["Node"]) or (Node("node-1", "10.244.1.0/24", "192.168.100.11"),)
    deployments = tuple(_deployment(f) for f in objects["Deployment"])
    pods = tuple(_pod(f) for f in objects["Pod"])
    services = tuple(_service(f) for f in objects["Service"])
    slices = tuple(_endpoint_slice(f) for f in objects["EndpointSlice"])
    traffic = tuple(_traffic(f) for f in head["traffic"].items()) if "traffic" in head else ()
    expect = tuple(_expectation(f) for f in head["expect"].items()) if "expect" in head else ()
    events = tuple(sorted((_event(f) for f in head["events"].items()), key=lambda e: e.at)) if "events" in head else ()
    scenario = Scenario(
        file=file,
        name=head["name"].str() if "name" in head else _stem(file),
        description=head["description"].str() if "description" in head else "",
        cluster=cluster, nodes=nodes, pods=pods, deployments=deployments, services=services,
        endpoint_slices=slices, traffic=traffic, expect=expect, events=events)
    _check_references(scenario)
    return scenario


def _stem(file: str) -> str:
    base = file.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _expand_lists(doc: Field) -> list[Field]:
    top = doc.mapping()
    if top["kind"].str() != "List":
        return [doc]
    fields = doc.mapping({"apiVersion", "kind", "items", "metadata"})
    out: list[Field] = []
    for item in fields["items"].items() if "items" in fields else []:
        if "kind" not in item.mapping():
            raise item.error("a List item needs `kind`")
        out.extend(_expand_lists(item))
    return out


def _cluster(f: Field) -> ClusterSettings:
    m = f.mapping({"cni", "cniPlugins", "proxy", "dataplane", "podNetwork", "clusterCIDR", "serviceCIDR", "dns"})
    proxy = ProxySettings()
    if "proxy" in m:
        p = m["proxy"].mapping({"mode", "iptablesLayout", "iptablesBackend", "ipvsScheduler", "masqueradeAll"})
        proxy = ProxySettings(
            mode=p["mode"].choice(PROXY_MODES) if "mode" in p else "iptables",
            iptables_layout=p["iptablesLayout"].choice(IPTABLES_LAYOUTS) if "iptablesLayout" in p else "modern",
            iptables_backend=p["iptablesBackend"].choice(IPTABLES_BACKENDS) if "iptablesBackend" in p else "nft",
            ipvs_scheduler=p["ipvsScheduler"].choice(IPVS_SCHEDULERS) if "ipvsScheduler" in p else "rr",
            masquerade_all=p["masqueradeAll"].bool() if "masqueradeAll" in p else False)
    cni = None
    if "cni" in m:
        cni = m["cni"].plain()
        if not isinstance(cni, dict) or not isinstance(cni.get("plugins"), list) or not cni["plugins"]:
            raise m["cni"].error("expected a CNI conflist: a mapping with `name`, `cniVersion` and `plugins`")
        for key in ("name", "cniVersion"):
            if not isinstance(cni.get(key), str):
                raise m["cni"].error(f"the conflist needs a string `{key}`")
    settings = ClusterSettings(
        cni=cni, proxy=proxy,
        cni_plugins=m["cniPlugins"].choice(("project", "reference")) if "cniPlugins" in m else "project",
        dataplane=m["dataplane"].choice(DATAPLANES) if "dataplane" in m else "kernel",
        pod_network=m["podNetwork"].choice(POD_NETWORKS) if "podNetwork" in m else "host-gw",
        cluster_cidr=m["clusterCIDR"].cidr() if "clusterCIDR" in m else "10.244.0.0/16",
        service_cidr=m["serviceCIDR"].cidr() if "serviceCIDR" in m else "10.96.0.0/12",
        dns=m["dns"].bool() if "dns" in m else False)
    return settings


def _metadata(f: Field, kind: str) -> tuple[str, str, dict[str, str], dict[str, str]]:
    m = f.mapping({"name", "namespace", "labels"} | _IGNORED_METADATA)
    if "name" not in m:
        raise f.error(f"{kind} needs metadata.name")
    name = m["name"].str()
    _check_dns_label(m["name"], name)
    namespace = m["namespace"].str() if "namespace" in m else "default"
    labels = m["labels"].str_map() if "labels" in m else {}
    annotations = m["annotations"].str_map() if "annotations" in m else {}
    return name, namespace, labels, annotations


def _check_dns_label(f: Field, name: str) -> None:
    ok = 0 < len(name) <= 63 and name[0].isalnum() and name[-1].isalnum() and all(
        c.islower() or c.isdigit() or c == "-" for c in name)
    if not ok:
        raise f.error(f"{name!r} is not a valid name (lower-case letters, digits and '-', at most 63)")


def _object(f: Field, kind: str, sections: set[str]) -> dict[str, Field]:
    return f.mapping({"apiVersion", "kind", "metadata"} | sections)


def _node(f: Field) -> Node:
    m = _object(f, "Node", {"spec", "status"})
    name, *_ = _metadata(m["metadata"], "Node") if "metadata" in m else _missing(f, "Node", "metadata")
    spec = m["spec"].mapping({"podCIDR", "podCIDRs", "taints", "unschedulable", "providerID"}) if "spec" in m else {}
    if "podCIDR" not in spec:
        raise f.error(f"Node {name} needs spec.podCIDR")
    pod_cidr = spec["podCIDR"].cidr()
    ip = None
    if "status" in m:
        status = m["status"].mapping({"addresses", "conditions", "capacity", "allocatable", "nodeInfo"})
        for a in status["addresses"].items() if "addresses" in status else []:
            am = a.mapping({"type", "address"})
            if "type" in am and am["type"].str() == "InternalIP" and "address" in am:
                ip = am["address"].ip()
                if ipaddress.IPv4Address(ip) not in UNDERLAY:
                    raise am["address"].error(f"node IP {ip} is outside the scenario underlay {UNDERLAY}")
                if ip == EXTERNAL_CLIENT_IP or ip.endswith(".1"):
                    raise am["address"].error(f"{ip} is reserved (the external client / underlay router)")
    if ip is None:
        raise f.error(f"Node {name} needs an InternalIP in status.addresses")
    return Node(name, pod_cidr, ip, f.line)


def _missing(f: Field, kind: str, what: str):  # type: ignore[no-untyped-def]
    raise f.error(f"{kind} needs {what}")


def _ports(f: Field) -> tuple[ContainerPort, ...]:
    out = []
    for p in f.items():
        pm = p.mapping({"containerPort", "protocol", "name", "hostPort", "hostIP"})
        if "containerPort" not in pm:
            raise p.error("a container port needs containerPort")
        out.append(ContainerPort(pm["containerPort"].int(1, 65535),
                                 pm["protocol"].choice(PROTOCOLS) if "protocol" in pm else "TCP",
                                 pm["name"].str() if "name" in pm else None))
    return tuple(out)


def _probe(f: Field) -> Probe:
    m = f.mapping({"httpGet", "tcpSocket", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
                   "successThreshold", "failureThreshold"})
    for kind in ("httpGet", "tcpSocket"):
        if kind in m:
            km = m[kind].mapping({"port", "path", "scheme", "host", "httpHeaders"} if kind == "httpGet" else {"port", "host"})
            if "port" not in km:
                raise m[kind].error("a probe needs a port")
            port_node = km["port"]
            port: int | str = port_node.int(1, 65535) if port_node.node.tag.endswith(":int") else port_node.str()
            return Probe(kind, port, km["path"].str() if "path" in km else "/")
    raise f.error("readinessProbe needs httpGet or tcpSocket (exec probes are not emulated)")


def _pod_template(spec_field: Field, labels: dict[str, str], annotations: dict[str, str]) -> PodTemplate:
    spec = spec_field.mapping({"containers", "nodeName"} | _IGNORED_POD_SPEC)
    ports: list[ContainerPort] = []
    readiness = None
    for c in spec["containers"].items() if "containers" in spec else []:
        cm = c.mapping({"name", "ports", "readinessProbe"} | _IGNORED_CONTAINER)
        if "ports" in cm:
            ports.extend(_ports(cm["ports"]))
        if "readinessProbe" in cm:
            readiness = _probe(cm["readinessProbe"])
    fail = annotations.get(FAIL_READINESS_ANNOTATION, "false").lower() == "true"
    return PodTemplate(labels=labels, ports=tuple(ports), readiness=readiness, fail_readiness=fail,
                       node_name=spec["nodeName"].str() if "nodeName" in spec else None)


def _pod(f: Field) -> Pod:
    m = _object(f, "Pod", {"spec", "status"})
    if "metadata" not in m:
        raise f.error("Pod needs metadata")
    name, namespace, labels, annotations = _metadata(m["metadata"], "Pod")
    if "spec" not in m:
        raise f.error(f"Pod {name} needs spec")
    return Pod(name, namespace, _pod_template(m["spec"], labels, annotations), None, f.line)


def _deployment(f: Field) -> Deployment:
    m = _object(f, "Deployment", {"spec", "status"})
    if "metadata" not in m:
        raise f.error("Deployment needs metadata")
    name, namespace, _, _ = _metadata(m["metadata"], "Deployment")
    if "spec" not in m:
        raise f.error(f"Deployment {name} needs spec")
    spec = m["spec"].mapping({"replicas", "selector", "template", "strategy", "minReadySeconds",
                              "revisionHistoryLimit", "progressDeadlineSeconds", "paused"})
    replicas = spec["replicas"].int(0, 200) if "replicas" in spec else 1
    if "selector" not in spec:
        raise m["spec"].error("a Deployment needs spec.selector")
    sel = spec["selector"].mapping({"matchLabels"})
    selector = sel["matchLabels"].str_map() if "matchLabels" in sel else {}
    if not selector:
        raise spec["selector"].error("spec.selector.matchLabels must not be empty")
    if "template" not in spec:
        raise m["spec"].error("a Deployment needs spec.template")
    t = spec["template"].mapping({"metadata", "spec"})
    tmeta = t["metadata"].mapping({"labels", "annotations"}) if "metadata" in t else {}
    labels = tmeta["labels"].str_map() if "labels" in tmeta else {}
    annotations = tmeta["annotations"].str_map() if "annotations" in tmeta else {}
    if any(labels.get(k) != v for k, v in selector.items()):
        raise spec["selector"].error("`selector` does not match template `labels`")
    if "spec" not in t:
        raise spec["template"].error("a pod template needs spec")
    return Deployment(name, namespace, replicas, selector, _pod_template(t["spec"], labels, annotations), f.line)


def _service(f: Field) -> Service:
    m = _object(f, "Service", {"spec", "status"})
    if "metadata" not in m:
        raise f.error("Service needs metadata")
    name, namespace, _, _ = _metadata(m["metadata"], "Service")
    if "spec" not in m:
        raise f.error(f"Service {name} needs spec")
    s = m["spec"].mapping({"type", "ports", "selector", "clusterIP", "clusterIPs", "sessionAffinity",
                           "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy",
                           "externalIPs", "externalName", "loadBalancerIP", "loadBalancerSourceRanges",
                           "publishNotReadyAddresses", "ipFamilies", "ipFamilyPolicy", "healthCheckNodePort",
                           "allocateLoadBalancerNodePorts"})
    stype = s["type"].choice(SERVICE_TYPES) if "type" in s else "ClusterIP"
    ports = []
    for p in s["ports"].items() if "ports" in s else []:
        pm = p.mapping({"name", "port", "targetPort", "protocol", "nodePort", "appProtocol"})
        if "port" not in pm:
            raise p.error("a service port needs `port`")
        port = pm["port"].int(1, 65535)
        target: int | str = port
        if "targetPort" in pm:
            tn = pm["targetPort"]
            target = tn.int(1, 65535) if tn.node.tag.endswith(":int") else tn.str()
        node_port = None
        if "nodePort" in pm:
            if stype not in ("NodePort", "LoadBalancer"):
                raise pm["nodePort"].error(f"nodePort is only valid for NodePort and LoadBalancer, not {stype}")
            node_port = pm["nodePort"].int(*NODE_PORT_RANGE)
        ports.append(ServicePort(port, target, pm["protocol"].choice(PROTOCOLS) if "protocol" in pm else "TCP",
                                 pm["name"].str() if "name" in pm else None, node_port))
    if len(ports) > 1 and any(p.name is None for p in ports):
        raise s["ports"].error("when a Service has several ports, each needs a name")
    cluster_ip = None
    if "clusterIP" in s:
        cluster_ip = "None" if s["clusterIP"].str() == "None" else s["clusterIP"].ip()
    affinity = False
    if "sessionAffinity" in s:
        affinity = s["sessionAffinity"].choice(("None", "ClientIP")) == "ClientIP"
    timeout = DEFAULT_AFFINITY_TIMEOUT
    if "sessionAffinityConfig" in s:
        c = s["sessionAffinityConfig"].mapping({"clientIP"})
        if "clientIP" in c:
            cm = c["clientIP"].mapping({"timeoutSeconds"})
            if "timeoutSeconds" in cm:
                timeout = cm["timeoutSeconds"].int(1, 86400)
    lb_ips: list[str] = []
    if "loadBalancerIP" in s:
        lb_ips.append(s["loadBalancerIP"].ip())
    if "status" in m:
        st = m["status"].mapping({"loadBalancer", "conditions"})
        if "loadBalancer" in st:
            lb = st["loadBalancer"].mapping({"ingress"})
            for ing in lb["ingress"].items() if "ingress" in lb else []:
                im = ing.mapping({"ip", "hostname", "ipMode", "ports"})
                if "ip" in im:
                    lb_ips.append(im["ip"].ip())
    if lb_ips and stype != "LoadBalancer":
        raise f.error(f"Service {name}: load-balancer IPs need type LoadBalancer")
    external_name = s["externalName"].str() if "externalName" in s else None
    if stype == "ExternalName" and not external_name:
        raise m["spec"].error("type ExternalName needs spec.externalName")
    selector = s["selector"].str_map() if "selector" in s else None
    etp = s["externalTrafficPolicy"].choice(("Cluster", "Local")) if "externalTrafficPolicy" in s else "Cluster"
    itp = s["internalTrafficPolicy"].choice(("Cluster", "Local")) if "internalTrafficPolicy" in s else "Cluster"
    return Service(name, namespace, stype, tuple(ports), selector, cluster_ip, affinity, timeout, etp, itp,
                   tuple(x.ip() for x in s["externalIPs"].items()) if "externalIPs" in s else (),
                   tuple(dict.fromkeys(lb_ips)), external_name, f.line)


def _endpoint_slice(f: Field) -> EndpointSlice:
    m = _object(f, "EndpointSlice", {"addressType", "endpoints", "ports"})
    if "metadata" not in m:
        raise f.error("EndpointSlice needs metadata")
    name, namespace, labels, _ = _metadata(m["metadata"], "EndpointSlice")
    service = labels.get("kubernetes.io/service-name")
    if not service:
        raise m["metadata"].error("an EndpointSlice needs the label kubernetes.io/service-name")
    if "addressType" in m and m["addressType"].str() != "IPv4":
        raise m["addressType"].error("only IPv4 EndpointSlices are emulated")
    endpoints = []
    for e in m["endpoints"].items() if "endpoints" in m else []:
        em = e.mapping({"addresses", "conditions", "nodeName", "targetRef", "zone", "hints", "hostname"})
        if "addresses" not in em:
            raise e.error("an endpoint needs addresses")
        ready = True
        if "conditions" in em:
            cm = em["conditions"].mapping({"ready", "serving", "terminating"})
            ready = cm["ready"].bool() if "ready" in cm else True
        pod = None
        if "targetRef" in em:
            tm = em["targetRef"].mapping({"kind", "name", "namespace", "uid"})
            pod = tm["name"].str() if "name" in tm else None
        endpoints.append(SliceEndpoint(tuple(a.ip() for a in em["addresses"].items()), ready,
                                       em["nodeName"].str() if "nodeName" in em else None, pod))
    ports = []
    for p in m["ports"].items() if "ports" in m else []:
        pm = p.mapping({"name", "port", "protocol", "appProtocol"})
        if "port" not in pm:
            raise p.error("an EndpointSlice port needs `port`")
        ports.append(SlicePort(pm["port"].int(1, 65535), pm["protocol"].choice(PROTOCOLS) if "protocol" in pm else "TCP",
                               pm["name"].str() if "name" in pm else None))
    return EndpointSlice(name, namespace, service, tuple(endpoints), tuple(ports), f.line)


def _traffic(f: Field) -> Traffic:
    m = f.mapping({"name", "from", "to", "protocol", "requests", "mode", "timeout", "rate", "dnsTransport",
                   "namespace"})
    for req in ("name", "from", "to"):
        if req not in m:
            raise f.error(f"a traffic entry needs `{req}`")
    source = m["from"].str()
    if source != "external" and not (source.startswith(("pod/", "deployment/")) and source.split("/", 1)[1]):
        raise m["from"].error(f"{source!r}: expected `external`, `pod/<name>` or `deployment/<name>`")
    t = m["to"].mapping({"service", "pod", "host", "namespace", "port", "via", "nodes", "address"})
    if sum(k in t for k in ("service", "pod", "host", "address")) != 1:
        raise m["to"].error("`to` needs exactly one of `service`, `pod`, `host` or `address`")
    port: int | str | None = None
    if "port" in t:
        port = t["port"].int(1, 65535) if t["port"].node.tag.endswith(":int") else t["port"].str()
    if ("address" in t or "pod" in t or "host" in t) and not isinstance(port, int):
        raise m["to"].error("a `pod`, `host` or literal `address` target needs a numeric `port`")
    via = t["via"].choice(("clusterIP", "nodePort", "loadBalancer", "externalIP")) if "via" in t else "clusterIP"
    target = Target(service=t["service"].str() if "service" in t else None,
                    pod=t["pod"].str() if "pod" in t else None,
                    host=t["host"].str() if "host" in t else None,
                    namespace=t["namespace"].str() if "namespace" in t else "default",
                    port=port, via=via,
                    nodes=tuple(n.str() for n in t["nodes"].items()) if "nodes" in t else None,
                    address=t["address"].ip() if "address" in t else None, line=m["to"].line)
    return Traffic(
        name=m["name"].str(), source=source, target=target,
        protocol=m["protocol"].choice(("tcp", "udp", "http")) if "protocol" in m else "tcp",
        requests=m["requests"].int(1, 100000) if "requests" in m else 30,
        mode=m["mode"].choice(("new", "keepalive")) if "mode" in m else "new",
        timeout=m["timeout"].float(0.05, 30) if "timeout" in m else 1.0,
        rate=m["rate"].float(0.1, 100000) if "rate" in m else None,
        dns_transport=m["dnsTransport"].choice(("udp", "tcp")) if "dnsTransport" in m else "udp",
        namespace=m["namespace"].str() if "namespace" in m else "default", line=f.line)


def _event(f: Field) -> Event:
    m = f.mapping({"at", "scale", "deletePod", "readiness", "rollout", "namespace"})
    if "at" not in m:
        raise f.error("an event needs `at` (seconds after the traffic starts)")
    at = m["at"].float(0, 3600)
    ns = m["namespace"].str() if "namespace" in m else "default"
    kinds = [k for k in ("scale", "deletePod", "readiness", "rollout") if k in m]
    if len(kinds) != 1:
        raise f.error("an event needs exactly one of scale, deletePod, readiness, rollout")
    kind = kinds[0]
    v = m[kind]
    if kind == "scale":
        sm = v.mapping({"deployment", "replicas"})
        if "deployment" not in sm or "replicas" not in sm:
            raise v.error("scale needs `deployment` and `replicas`")
        return Event(at, kind, sm["deployment"].str(), sm["replicas"].int(0, 200), ns, f.line)
    if kind == "readiness":
        rm = v.mapping({"pod", "ready"})
        if "pod" not in rm or "ready" not in rm:
            raise v.error("readiness needs `pod` and `ready`")
        return Event(at, kind, rm["pod"].str(), rm["ready"].bool(), ns, f.line)
    if kind == "rollout":
        rm = v.mapping({"deployment"})
        if "deployment" not in rm:
            raise v.error("rollout needs `deployment`")
        return Event(at, kind, rm["deployment"].str(), None, ns, f.line)
    return Event(at, kind, v.str(), None, ns, f.line)


def _expectation(f: Field) -> Expectation:
    m = f.mapping({"traffic", "reachable", "rejected", "answeredBy", "distribution", "affinity", "source",
                   "resolvesTo"})
    if "traffic" not in m:
        raise f.error("an expectation needs `traffic` (the name of a traffic entry)")
    dist = None
    if "distribution" in m:
        d = m["distribution"].mapping({"tolerance", "by", "weights"})
        if "tolerance" not in d:
            raise m["distribution"].error("a distribution needs `tolerance` (e.g. 0.15)")
        weights = None
        if "weights" in d:
            weights = {k: v.float(0, 1e9) for k, v in d["weights"].mapping().items()}
            if "by" not in d:
                raise d["weights"].error("`weights` needs `by` (the pod label they are keyed on)")
        dist = Distribution(d["tolerance"].float(0, 1), d["by"].str() if "by" in d else None, weights)
    answered = None
    if "answeredBy" in m:
        a = m["answeredBy"].mapping({"matchLabels"})
        answered = a["matchLabels"].str_map() if "matchLabels" in a else {}
    return Expectation(
        traffic=m["traffic"].str(),
        reachable=m["reachable"].bool() if "reachable" in m else None,
        rejected=m["rejected"].bool() if "rejected" in m else None,
        answered_by=answered, distribution=dist,
        affinity=m["affinity"].bool() if "affinity" in m else None,
        source=m["source"].choice(("preserved", "masqueraded")) if "source" in m else None,
        resolves_to=m["resolvesTo"].str() if "resolvesTo" in m else None,
        line=f.line)


# ---------------------------------------------------------------------------------------------
# Cross-references: names that must exist, addresses that must not collide
# ---------------------------------------------------------------------------------------------
def _check_references(sc: Scenario) -> None:
    err = lambda line, msg: SpecError(sc.file, line, msg)  # noqa: E731
    cluster = ipaddress.IPv4Network(sc.cluster.cluster_cidr)
    service_net = ipaddress.IPv4Network(sc.cluster.service_cidr)
    seen: dict[str, Node] = {}
    for n in sc.nodes:
        if n.name in seen:
            raise err(n.line, f"duplicate Node {n.name}")
        cidr = ipaddress.IPv4Network(n.pod_cidr)
        if not cidr.subnet_of(cluster):
            raise err(n.line, f"Node {n.name}: podCIDR {cidr} is outside clusterCIDR {cluster}")
        for other in seen.values():
            if cidr.overlaps(ipaddress.IPv4Network(other.pod_cidr)):
                raise err(n.line, f"Node {n.name}: podCIDR {cidr} overlaps Node {other.name}'s")
            if other.internal_ip == n.internal_ip:
                raise err(n.line, f"Node {n.name}: IP {n.internal_ip} is also Node {other.name}'s")
        seen[n.name] = n
    names: set[tuple[str, str]] = set()
    for d in sc.deployments:
        if d.template.node_name and d.template.node_name not in seen:
            raise err(d.line, f"Deployment {d.name}: unknown nodeName {d.template.node_name}")
    for p in sc.pods:
        if (p.namespace, p.name) in names:
            raise err(p.line, f"duplicate Pod {p.namespace}/{p.name}")
        names.add((p.namespace, p.name))
        if p.template.node_name and p.template.node_name not in seen:
            raise err(p.line, f"Pod {p.name}: unknown nodeName {p.template.node_name}")
    svc_ips: dict[str, str] = {}
    node_ports: dict[tuple[int, str], str] = {}
    for s in sc.services:
        if s.cluster_ip and s.cluster_ip != "None":
            if ipaddress.IPv4Address(s.cluster_ip) not in service_net:
                raise err(s.line, f"Service {s.name}: clusterIP {s.cluster_ip} is outside serviceCIDR {service_net}")
            if s.cluster_ip in svc_ips:
                raise err(s.line, f"Service {s.name}: clusterIP {s.cluster_ip} is also {svc_ips[s.cluster_ip]}'s")
            svc_ips[s.cluster_ip] = s.name
        for p in s.ports:
            if p.node_port:
                key = (p.node_port, p.protocol)
                if key in node_ports:
                    raise err(s.line, f"Service {s.name}: nodePort {p.node_port} is also {node_ports[key]}'s")
                node_ports[key] = s.name
    traffic_names: set[str] = set()
    pod_names = {(p.namespace, p.name) for p in sc.pods}
    dep_names = {(d.namespace, d.name) for d in sc.deployments}
    for t in sc.traffic:
        if t.name in traffic_names:
            raise err(t.line, f"duplicate traffic name {t.name!r}")
        traffic_names.add(t.name)
        kind, _, name = t.source.partition("/")
        if kind == "pod" and (t.namespace, name) not in pod_names:
            raise err(t.line, f"traffic {t.name}: no Pod {t.namespace}/{name}")
        if kind == "deployment" and (t.namespace, name) not in dep_names:
            raise err(t.line, f"traffic {t.name}: no Deployment {t.namespace}/{name}")
        tg = t.target
        if tg.service is not None:
            svc = sc.service(tg.namespace, tg.service)
            if svc is None:
                raise err(tg.line, f"traffic {t.name}: no Service {tg.namespace}/{tg.service}")
            if tg.port is not None and not any(tg.port in (p.port, p.name) for p in svc.ports):
                raise err(tg.line, f"traffic {t.name}: Service {svc.name} has no port {tg.port!r}")
            if tg.via == "nodePort" and svc.type not in ("NodePort", "LoadBalancer"):
                raise err(tg.line, f"traffic {t.name}: Service {svc.name} is {svc.type}, it has no NodePort")
            if tg.via == "loadBalancer" and not svc.load_balancer_ips:
                raise err(tg.line, f"traffic {t.name}: Service {svc.name} has no load-balancer IP")
            if tg.via == "externalIP" and not svc.external_ips:
                raise err(tg.line, f"traffic {t.name}: Service {svc.name} has no externalIPs")
            if tg.via == "clusterIP" and t.source == "external":
                raise err(tg.line, f"traffic {t.name}: a ClusterIP is not reachable from outside the cluster; "
                                   "use via: nodePort, loadBalancer or externalIP")
        if tg.pod is not None and (tg.namespace, tg.pod) not in pod_names and not any(
                (d.namespace, d.name) == (tg.namespace, tg.pod) for d in sc.deployments):
            raise err(tg.line, f"traffic {t.name}: no Pod or Deployment {tg.namespace}/{tg.pod}")
        if tg.host is not None and t.source == "external":
            raise err(tg.line, f"traffic {t.name}: the external client does not use the cluster DNS; "
                               "resolve from a pod, or target a NodePort")
        for n in tg.nodes or ():
            if n not in seen:
                raise err(tg.line, f"traffic {t.name}: unknown node {n}")
    for ev in sc.events:
        if ev.kind in ("scale", "rollout") and (ev.namespace, ev.target) not in dep_names:
            raise err(ev.line, f"event: no Deployment {ev.namespace}/{ev.target}")
        if ev.kind in ("deletePod", "readiness") and (ev.namespace, ev.target) not in pod_names | dep_names:
            raise err(ev.line, f"event: no Pod or Deployment {ev.namespace}/{ev.target}")
    for e in sc.expect:
        if e.traffic not in traffic_names:
            raise err(e.line, f"expectation refers to unknown traffic {e.traffic!r}")

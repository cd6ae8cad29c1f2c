"""Read Kubernetes objects from YAML or JSON files into the records of `dataplane.k8s.objects`.

Accepts single objects, multi-document YAML, JSON arrays and `kind: List` / `*List` wrappers (what
`kubectl get services,endpointslices -A -o json` prints). Legacy v1 Endpoints are converted to
EndpointSlices the way the EndpointSlice mirroring controller does. Anything invalid raises
`ModelError` naming the file, the object and the field; nothing else escapes.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dataplane.k8s.errors import ModelError
from dataplane.k8s.objects import (ADDRESS_TYPES, AFFINITIES, DEFAULT_AFFINITY_TIMEOUT, PROTOCOLS,
                                   SERVICE_NAME_LABEL, SERVICE_TYPES, TRAFFIC_POLICIES, Cluster,
                                   Endpoint, EndpointPort, EndpointSlice, LoadBalancerIngress, Node,
                                   NodeAddress, Pod, Service, ServicePort)

MAX_DOCUMENT_BYTES = 512 * 1024 * 1024


@contextmanager
def gc_paused() -> Iterator[None]:
    """Bulk construction of acyclic records: the cyclic GC only burns time rescanning them
    (about half of the load time at 100k endpoints)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_paths(paths: Iterable[str | Path]) -> Cluster:
    """All objects of all files, in order."""
    cluster = Cluster()
    with gc_paused():
        for path in paths:
            cluster.extend(load_path(path))
    return cluster


def load_path(path: str | Path) -> Cluster:
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read: {exc.strerror or exc}", file=name) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ModelError(f"file is larger than {MAX_DOCUMENT_BYTES} bytes", file=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"not UTF-8 text (byte {exc.start})", file=name) from None
    return load_text(text, source=name)


def load_text(text: str, source: str = "<input>") -> Cluster:
    """Parse YAML or JSON text holding one or more objects."""
    cluster = Cluster()
    with gc_paused():
        for index, doc in enumerate(_documents(text, source)):
            if doc is None:
                continue
            for obj in _flatten(doc, source, f"document {index + 1}"):
                _add_object(cluster, obj, source)
    return cluster


def load_objects(objs: Iterable[dict[str, Any]], source: str = "<objects>") -> Cluster:
    """Objects already decoded (e.g. built by a test or the scenario runner)."""
    cluster = Cluster()
    with gc_paused():
        for i, doc in enumerate(objs):
            for obj in _flatten(doc, source, f"object {i + 1}"):
                _add_object(cluster, obj, source)
    return cluster


# --- documents ---------------------------------------------------------------------------------

def _documents(text: str, source: str) -> Iterator[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            yield json.loads(text)
            return
        except json.JSONDecodeError as exc:
            if stripped.startswith("["):
                raise ModelError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                                 file=source) from None
            # A '{' document may still be YAML flow style followed by more documents: fall through.
    import yaml

    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster
        yield from list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ModelError(f"invalid YAML{where}: {problem}", file=source) from None
    except (ValueError, RecursionError) as exc:  # e.g. absurd nesting or numbers
        raise ModelError(f"invalid YAML: {exc}", file=source) from None


def _flatten(doc: Any, source: str, where: str) -> Iterator[dict[str, Any]]:
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _flatten(item, source, f"{where} item {i + 1}")
        return
    if not isinstance(doc, dict):
        raise ModelError(f"expected a Kubernetes object (a mapping), found {_kind_of(doc)}",
                         file=source, obj=where)
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        items = doc.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            raise ModelError("must be a list", file=source, obj=f"{where} ({kind})", field="items")
        item_kind = kind[: -len("List")] or None
        for i, item in enumerate(items):
            if isinstance(item, dict) and "kind" not in item and item_kind:
                item = {**item, "kind": item_kind}
            yield from _flatten(item, source, f"{where} ({kind}) item {i + 1}")
        return
    yield doc


def _kind_of(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "nothing", list: "a list"}.get(type(value), type(value).__name__)


# --- field access with located errors ------------------------------------------------------------

@dataclass
class _Obj:
    """One object being read: every error it raises names the file and the object."""

    file: str
    label: str

    def error(self, field: str, message: str) -> ModelError:
        return ModelError(message, file=self.file, obj=self.label, field=field)

    def map(self, parent: Any, key: str, path: str, *, required: bool = False) -> dict[str, Any]:
        value = parent.get(key) if isinstance(parent, dict) else None
        if value is None:
            if required:
                raise self.error(path, "is required")
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"must be a mapping, found {_kind_of(value)}")
        return value

    def list(self, parent: dict[str, Any], key: str, path: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"must be a list, found {_kind_of(value)}")
        return value

    def str(self, parent: dict[str, Any], key: str, path: str, *, default: str | None = None,
            required: bool = False) -> str | None:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.error(path, "is required")
            return default
        if not isinstance(value, str):
            raise self.error(path, f"must be a string, found {_kind_of(value)}")
        return value

    def choice(self, parent: dict[str, Any], key: str, path: str, choices: tuple[str, ...],
               default: str) -> str:
        value = self.str(parent, key, path, default=default)
        assert value is not None
        if value not in choices:
            raise self.error(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def int(self, parent: dict[str, Any], key: str, path: str, *, lo: int, hi: int,
            default: int | None = None, required: bool = False) -> int | None:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.error(path, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"must be an integer, found {_kind_of(value)}")
        if not lo <= value <= hi:
            raise self.error(path, f"{value} is out of range {lo}..{hi}")
        return value

    def bool(self, parent: dict[str, Any], key: str, path: str) -> bool | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(path, f"must be true or false, found {_kind_of(value)}")
        return value

    def ip(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"must be an IP address string, found {_kind_of(value)}")
        canon = canonical_ip(value.strip())
        if canon is None:
            raise self.error(path, f"{value!r} is not a valid IP address")
        return canon

    def cidr(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"must be a CIDR string, found {_kind_of(value)}")
        try:
            # Go's net.ParseCIDR keeps host bits in the IP but kube-proxy prints the network.
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise self.error(path, f"{value!r} is not a valid CIDR") from None

    def strings(self, parent: dict[str, Any], key: str, path: str) -> list[str]:
        out = []
        for i, item in enumerate(self.list(parent, key, path)):
            if not isinstance(item, str):
                raise self.error(f"{path}[{i}]", f"must be a string, found {_kind_of(item)}")
            out.append(item)
        return out


@lru_cache(maxsize=1 << 16)
def canonical_ip(text: str) -> str | None:
    """The canonical spelling of an IP address, or None. Dotted quads go through inet_pton (fast,
    and like Python it refuses leading zeros); IPv6 is compressed as Go and Python print it."""
    try:
        socket.inet_pton(socket.AF_INET, text)
        return text
    except (OSError, ValueError):
        pass
    if ":" not in text:
        return None
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _metadata(obj: dict[str, Any], file: str, where: str, kind: str) -> tuple[str, str, dict[str, Any]]:
    probe = _Obj(file, f"{kind} ({where})")
    meta = probe.map(obj, "metadata", "metadata", required=True)
    name = probe.str(meta, "name", "metadata.name", required=True)
    namespace = probe.str(meta, "namespace", "metadata.namespace", default="default")
    if not name:
        raise probe.error("metadata.name", "must not be empty")
    return namespace or "default", name, meta


def _labels(o: _Obj, meta: dict[str, Any], path: str, key: str = "labels") -> dict[str, str]:
    labels = o.map(meta, key, path)
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise o.error(f"{path}.{k}", "label keys and values must be strings")
    return dict(labels)


# --- objects -------------------------------------------------------------------------------------

def _add_object(cluster: Cluster, obj: dict[str, Any], source: str) -> None:
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        name = obj.get("metadata", {}).get("name") if isinstance(obj.get("metadata"), dict) else None
        raise ModelError("is required (every object needs a kind)", file=source,
                         obj=f"object {name!r}" if name else None, field="kind")
    api = obj.get("apiVersion")
    if kind == "Service":
        cluster.services.append(_service(obj, source))
    elif kind == "EndpointSlice":
        if api not in (None, "discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"):
            raise ModelError(f"unsupported apiVersion {api!r} for EndpointSlice", file=source,
                             field="apiVersion")
        cluster.endpoint_slices.append(_endpoint_slice(obj, source))
    elif kind == "Endpoints":
        cluster.endpoint_slices.extend(_legacy_endpoints(obj, source))
    elif kind == "Node":
        cluster.nodes.append(_node(obj, source))
    elif kind == "Pod":
        cluster.pods.append(_pod(obj, source))
    else:
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        cluster.ignored.append(f"{kind} {meta.get('namespace', '')}/{meta.get('name', '?')}".replace(" /", " "))


def _service(obj: dict[str, Any], file: str) -> Service:
    ns, name, meta = _metadata(obj, file, "?", "Service")
    o = _Obj(file, f"Service {ns}/{name}")
    spec = o.map(obj, "spec", "spec", required=True)
    status = o.map(obj, "status", "status")
    svc_type = o.choice(spec, "type", "spec.type", SERVICE_TYPES, "ClusterIP")

    cluster_ip = o.str(spec, "clusterIP", "spec.clusterIP", default="")
    cluster_ips_raw = o.strings(spec, "clusterIPs", "spec.clusterIPs")
    headless = cluster_ip == "None" or (cluster_ips_raw[:1] == ["None"])
    cluster_ips: list[str] = []
    if not headless:
        if cluster_ip:
            cluster_ips.append(o.ip(cluster_ip, "spec.clusterIP"))
        for i, ip in enumerate(cluster_ips_raw):
            canon = o.ip(ip, f"spec.clusterIPs[{i}]")
            if i == 0 and cluster_ips and canon != cluster_ips[0]:
                raise o.error("spec.clusterIPs[0]", f"{canon} differs from spec.clusterIP {cluster_ips[0]}")
            if canon not in cluster_ips:
                cluster_ips.append(canon)
        if len({ipaddress.ip_address(ip).version for ip in cluster_ips}) != len(cluster_ips):
            raise o.error("spec.clusterIPs", "holds two addresses of the same IP family")

    ports: list[ServicePort] = []
    seen_names: set[str] = set()
    raw_ports = o.list(spec, "ports", "spec.ports")
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        if not isinstance(raw, dict):
            raise o.error(path, f"must be a mapping, found {_kind_of(raw)}")
        pname = o.str(raw, "name", f"{path}.name", default="") or ""
        if len(raw_ports) > 1 and not pname:
            raise o.error(f"{path}.name", "is required when a Service has more than one port")
        proto = o.choice(raw, "protocol", f"{path}.protocol", PROTOCOLS, "TCP")
        if pname in seen_names:
            raise o.error(f"{path}.name", f"duplicate port name {pname!r}")
        seen_names.add(pname)
        port = o.int(raw, "port", f"{path}.port", lo=1, hi=65535, required=True)
        node_port = o.int(raw, "nodePort", f"{path}.nodePort", lo=0, hi=65535, default=0)
        target = raw.get("targetPort")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, str))):
            raise o.error(f"{path}.targetPort", f"must be a number or a port name, found {_kind_of(target)}")
        if isinstance(target, int) and not 1 <= target <= 65535:
            raise o.error(f"{path}.targetPort", f"{target} is out of range 1..65535")
        if svc_type == "ClusterIP" and node_port:
            raise o.error(f"{path}.nodePort", "may only be set for NodePort and LoadBalancer services")
        ports.append(ServicePort(name=pname, protocol=proto, port=port or 0,
                                 target_port=target, node_port=node_port or 0))

    external_ips = tuple(o.ip(ip, f"spec.externalIPs[{i}]")
                         for i, ip in enumerate(o.strings(spec, "externalIPs", "spec.externalIPs")))
    ranges = tuple(o.cidr(c, f"spec.loadBalancerSourceRanges[{i}]")
                   for i, c in enumerate(o.strings(spec, "loadBalancerSourceRanges",
                                                   "spec.loadBalancerSourceRanges")))
    lb = o.map(status, "loadBalancer", "status.loadBalancer")
    ingress = []
    for i, ing in enumerate(o.list(lb, "ingress", "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ing, dict):
            raise o.error(path, f"must be a mapping, found {_kind_of(ing)}")
        ip = o.str(ing, "ip", f"{path}.ip")
        ingress.append(LoadBalancerIngress(
            ip=o.ip(ip, f"{path}.ip") if ip else None,
            hostname=o.str(ing, "hostname", f"{path}.hostname"),
            ip_mode=o.choice(ing, "ipMode", f"{path}.ipMode", ("VIP", "Proxy"), "VIP")))

    affinity = o.choice(spec, "sessionAffinity", "spec.sessionAffinity", AFFINITIES, "None")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    if affinity == "ClientIP":
        cfg = o.map(o.map(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig"), "clientIP",
                    "spec.sessionAffinityConfig.clientIP")
        timeout = o.int(cfg, "timeoutSeconds", "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        lo=1, hi=86400, default=DEFAULT_AFFINITY_TIMEOUT) or DEFAULT_AFFINITY_TIMEOUT
    etp = o.choice(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    itp = o.choice(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    hcnp = o.int(spec, "healthCheckNodePort", "spec.healthCheckNodePort", lo=0, hi=65535, default=0) or 0
    external_name = o.str(spec, "externalName", "spec.externalName")
    if svc_type == "ExternalName" and not external_name:
        raise o.error("spec.externalName", "is required for type ExternalName")
    if svc_type in ("ClusterIP", "NodePort", "LoadBalancer") and not headless and not ports:
        raise o.error("spec.ports", "a non-headless Service needs at least one port")
    annotations = _labels(o, meta, "metadata.annotations", "annotations")
    return Service(namespace=ns, name=name, type=svc_type, cluster_ips=tuple(cluster_ips),
                   headless=headless, ports=tuple(ports), external_ips=external_ips,
                   load_balancer_ingress=tuple(ingress), load_balancer_source_ranges=ranges,
                   session_affinity=affinity, affinity_timeout=timeout,
                   external_traffic_policy=etp, internal_traffic_policy=itp,
                   health_check_node_port=hcnp, external_name=external_name, annotations=annotations)


def _endpoint_port(o: _Obj, raw: Any, path: str) -> EndpointPort:
    if not isinstance(raw, dict):
        raise o.error(path, f"must be a mapping, found {_kind_of(raw)}")
    return EndpointPort(name=o.str(raw, "name", f"{path}.name", default="") or "",
                        port=o.int(raw, "port", f"{path}.port", lo=0, hi=65535),
                        protocol=o.choice(raw, "protocol", f"{path}.protocol", PROTOCOLS, "TCP"))


def _endpoint_slice(obj: dict[str, Any], file: str) -> EndpointSlice:
    ns, name, meta = _metadata(obj, file, "?", "EndpointSlice")
    o = _Obj(file, f"EndpointSlice {ns}/{name}")
    labels = _labels(o, meta, "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        raise o.error(f"metadata.labels[{SERVICE_NAME_LABEL}]",
                      "is required (kube-proxy maps a slice to its Service through it)")
    if obj.get("addressType") is None:
        raise o.error("addressType", "is required")
    address_type = o.choice(obj, "addressType", "addressType", ADDRESS_TYPES, "IPv4")
    endpoints = []
    want_v6 = address_type == "IPv6"
    for i, raw in enumerate(o.list(obj, "endpoints", "endpoints")):
        fast = _plain_endpoint(raw, want_v6) if address_type != "FQDN" else None
        if fast is not None:
            endpoints.append(fast)
            continue
        path = f"endpoints[{i}]"
        if not isinstance(raw, dict):
            raise o.error(path, f"must be a mapping, found {_kind_of(raw)}")
        addrs = o.strings(raw, "addresses", f"{path}.addresses")
        if not addrs:
            raise o.error(f"{path}.addresses", "needs at least one address")
        if address_type in ("IPv4", "IPv6"):
            want = 4 if address_type == "IPv4" else 6
            canon = []
            for j, a in enumerate(addrs):
                ip = o.ip(a, f"{path}.addresses[{j}]")
                if (6 if ":" in ip else 4) != want:
                    raise o.error(f"{path}.addresses[{j}]", f"{ip} is not an {address_type} address")
                canon.append(ip)
            addrs = canon
        cond = o.map(raw, "conditions", f"{path}.conditions")
        hints = o.map(raw, "hints", f"{path}.hints")
        zones = tuple(_hint_names(o, hints, "forZones", f"{path}.hints.forZones"))
        nodes = tuple(_hint_names(o, hints, "forNodes", f"{path}.hints.forNodes"))
        endpoints.append(Endpoint(
            addresses=tuple(addrs),
            ready=o.bool(cond, "ready", f"{path}.conditions.ready"),
            serving=o.bool(cond, "serving", f"{path}.conditions.serving"),
            terminating=o.bool(cond, "terminating", f"{path}.conditions.terminating"),
            node_name=o.str(raw, "nodeName", f"{path}.nodeName"),
            zone=o.str(raw, "zone", f"{path}.zone"), hint_zones=zones, hint_nodes=nodes))
    ports = tuple(_endpoint_port(o, raw, f"ports[{i}]") for i, raw in enumerate(o.list(obj, "ports", "ports")))
    return EndpointSlice(namespace=ns, name=name, service_name=service, address_type=address_type,
                         endpoints=tuple(endpoints), ports=ports)


_OPTIONAL_STR_FIELDS = ("nodeName", "zone")
_CONDITIONS = ("ready", "serving", "terminating")


def _plain_endpoint(raw: Any, want_v6: bool) -> Endpoint | None:
    """The common, valid endpoint without building error paths (10k-service inputs hold 100k of
    them); None sends anything unusual through the checking path, which names the field."""
    if type(raw) is not dict:
        return None
    addrs = raw.get("addresses")
    if type(addrs) is not list or not addrs:
        return None
    canon = []
    for a in addrs:
        ip = canonical_ip(a) if type(a) is str else None
        if ip is None or (":" in ip) != want_v6:
            return None
        canon.append(ip)
    for key in _OPTIONAL_STR_FIELDS:
        v = raw.get(key)
        if v is not None and type(v) is not str:
            return None
    cond = raw.get("conditions")
    flags: list[bool | None] = [None, None, None]
    if cond is not None:
        if type(cond) is not dict:
            return None
        for n, key in enumerate(_CONDITIONS):
            v = cond.get(key)
            if v is not None and type(v) is not bool:
                return None
            flags[n] = v
    if raw.get("hints"):
        return None
    return Endpoint(addresses=tuple(canon), ready=flags[0], serving=flags[1], terminating=flags[2],
                    node_name=raw.get("nodeName"), zone=raw.get("zone"))


def _hint_names(o: _Obj, hints: dict[str, Any], key: str, path: str) -> Iterator[str]:
    for i, item in enumerate(o.list(hints, key, path)):
        if not isinstance(item, dict):
            raise o.error(f"{path}[{i}]", f"must be a mapping, found {_kind_of(item)}")
        value = o.str(item, "name", f"{path}[{i}].name", required=True)
        assert value is not None
        yield value


def _legacy_endpoints(obj: dict[str, Any], file: str) -> list[EndpointSlice]:
    """v1 Endpoints -> one EndpointSlice per subset and address family (the mirroring controller's
    shape). `addresses` are ready; `notReadyAddresses` are neither ready nor serving."""
    ns, name, _meta = _metadata(obj, file, "?", "Endpoints")
    o = _Obj(file, f"Endpoints {ns}/{name}")
    slices = []
    for s, subset in enumerate(o.list(obj, "subsets", "subsets")):
        path = f"subsets[{s}]"
        if not isinstance(subset, dict):
            raise o.error(path, f"must be a mapping, found {_kind_of(subset)}")
        ports = tuple(_endpoint_port(o, raw, f"{path}.ports[{i}]")
                      for i, raw in enumerate(o.list(subset, "ports", f"{path}.ports")))
        by_family: dict[int, list[Endpoint]] = {4: [], 6: []}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for i, addr in enumerate(o.list(subset, key, f"{path}.{key}")):
                apath = f"{path}.{key}[{i}]"
                if not isinstance(addr, dict):
                    raise o.error(apath, f"must be a mapping, found {_kind_of(addr)}")
                ip = o.ip(o.str(addr, "ip", f"{apath}.ip", required=True), f"{apath}.ip")
                ep = Endpoint(addresses=(ip,), ready=ready, serving=ready, terminating=False,
                              node_name=o.str(addr, "nodeName", f"{apath}.nodeName"))
                by_family[ipaddress.ip_address(ip).version].append(ep)
        for family, eps in by_family.items():
            if eps:
                slices.append(EndpointSlice(namespace=ns, name=f"{name}-mirror-{s}-ipv{family}",
                                            service_name=name, address_type=f"IPv{family}",
                                            endpoints=tuple(eps), ports=ports))
    return slices


def _node(obj: dict[str, Any], file: str) -> Node:
    _ns, name, meta = _metadata(obj, file, "?", "Node")
    o = _Obj(file, f"Node {name}")
    spec = o.map(obj, "spec", "spec")
    status = o.map(obj, "status", "status")
    addresses = []
    for i, raw in enumerate(o.list(status, "addresses", "status.addresses")):
        path = f"status.addresses[{i}]"
        if not isinstance(raw, dict):
            raise o.error(path, f"must be a mapping, found {_kind_of(raw)}")
        atype = o.str(raw, "type", f"{path}.type", required=True) or ""
        addr = o.str(raw, "address", f"{path}.address", required=True) or ""
        if atype in ("InternalIP", "ExternalIP"):
            addr = o.ip(addr, f"{path}.address")
        addresses.append(NodeAddress(atype, addr))
    cidrs = [o.cidr(c, f"spec.podCIDRs[{i}]") for i, c in enumerate(o.strings(spec, "podCIDRs", "spec.podCIDRs"))]
    single = o.str(spec, "podCIDR", "spec.podCIDR")
    if single and not cidrs:
        cidrs = [o.cidr(single, "spec.podCIDR")]
    return Node(name=name, addresses=tuple(addresses), pod_cidrs=tuple(cidrs),
                labels=_labels(o, meta, "metadata.labels"))


def _pod(obj: dict[str, Any], file: str) -> Pod:
    ns, name, meta = _metadata(obj, file, "?", "Pod")
    o = _Obj(file, f"Pod {ns}/{name}")
    spec = o.map(obj, "spec", "spec")
    status = o.map(obj, "status", "status")
    ips: list[str] = []
    for i, raw in enumerate(o.list(status, "podIPs", "status.podIPs")):
        if not isinstance(raw, dict):
            raise o.error(f"status.podIPs[{i}]", f"must be a mapping, found {_kind_of(raw)}")
        ips.append(o.ip(o.str(raw, "ip", f"status.podIPs[{i}].ip", required=True), f"status.podIPs[{i}].ip"))
    single = o.str(status, "podIP", "status.podIP")
    if single and not ips:
        ips.append(o.ip(single, "status.podIP"))
    return Pod(namespace=ns, name=name, node_name=o.str(spec, "nodeName", "spec.nodeName"),
               pod_ips=tuple(ips), host_network=bool(o.bool(spec, "hostNetwork", "spec.hostNetwork")),
               phase=o.str(status, "phase", "status.phase"), labels=_labels(o, meta, "metadata.labels"))

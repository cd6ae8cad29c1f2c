"""Cluster DNS: the records kube-dns would serve, the server the kube-dns pod runs, and a stub
resolver that reads a pod's ClusterFirst resolv.conf.

Records (the Kubernetes DNS specification, cluster domain `cluster.local`):
- `<svc>.<ns>.svc.cluster.local` A -> the ClusterIP (ClusterIP, NodePort, LoadBalancer services);
- headless: A -> every ready endpoint IP, and one name per endpoint,
  `<a-b-c-d>.<svc>.<ns>.svc.cluster.local` (CoreDNS's form when endpoints have no hostname);
- ExternalName: CNAME -> `spec.externalName`;
- SRV `_<port>._<proto>.<svc>.<ns>.svc.cluster.local` for named ports.
Names in the cluster domain that do not exist get NXDOMAIN; other zones are REFUSED (the
emulated cluster has no upstream resolver).

The server (dnslib, UDP and TCP 53) runs as the kube-dns pod's process and reloads its zone file
when the runner rewrites it after an endpoint change. Clients reach it at the kube-dns Service IP
(10.96.0.10), through the node's service dataplane like any other service.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass

CLUSTER_DOMAIN = "cluster.local"
KUBE_DNS_NAMESPACE = "kube-system"
KUBE_DNS_NAME = "kube-dns"
TTL = 5


@dataclass(frozen=True)
class ResolvConf:
    nameserver: str
    search: tuple[str, ...]
    ndots: int = 5

    def text(self) -> str:
        return f"search {' '.join(self.search)}\nnameserver {self.nameserver}\noptions ndots:{self.ndots}\n"

    @classmethod
    def cluster_first(cls, pod_namespace: str, dns_ip: str) -> "ResolvConf":
        """What kubelet writes for dnsPolicy ClusterFirst."""
        return cls(dns_ip, (f"{pod_namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN))

    def candidates(self, name: str) -> list[str]:
        """The names a resolver tries, in order (resolv.conf(5): ndots and the search list)."""
        if name.endswith("."):
            return [name.rstrip(".")]
        searched = [f"{name}.{s}" for s in self.search]
        return [name, *searched] if name.count(".") >= self.ndots else [*searched, name]


def records(services: list[tuple[object, str | None]], endpoints: dict[str, list]) -> dict[str, list[list]]:
    """name -> [[type, value], ...] for the zone. `services` are (spec.Service, clusterIP) pairs."""
    zone: dict[str, list[list]] = {}
    for svc, cluster_ip in services:
        name = f"{svc.name}.{svc.namespace}.svc.{CLUSTER_DOMAIN}"  # type: ignore[attr-defined]
        if svc.type == "ExternalName":  # type: ignore[attr-defined]
            zone[name] = [["CNAME", svc.external_name]]  # type: ignore[attr-defined]
            continue
        per_port = endpoints.get(f"{svc.namespace}/{svc.name}", [])  # type: ignore[attr-defined]
        if svc.headless:  # type: ignore[attr-defined]
            ips = sorted({e.ip for spe in per_port for e in spe.ready}, key=lambda ip: tuple(map(int, ip.split("."))))
            zone[name] = [["A", ip] for ip in ips]
            for ip in ips:
                zone[f"{ip.replace('.', '-')}.{name}"] = [["A", ip]]
        elif cluster_ip:
            zone[name] = [["A", cluster_ip]]
        for port in svc.ports:  # type: ignore[attr-defined]
            if port.name:
                zone[f"_{port.name}._{port.protocol.lower()}.{name}"] = [["SRV", f"0 100 {port.port} {name}."]]
    return zone


def write_zone(path: str, zone: dict[str, list[list]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(zone, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The server (runs in the kube-dns pod)
# ---------------------------------------------------------------------------------------------
class ZoneResolver:
    def __init__(self, path: str) -> None:
        self.path = path
        self.mtime = -1.0
        self.zone: dict[str, list[list]] = {}
        self.lock = threading.Lock()

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self.mtime:
            with open(self.path) as f:
                self.zone = {k.lower(): v for k, v in json.load(f).items()}
            self.mtime = mtime

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        from dnslib import CNAME, QTYPE, RCODE, RR, SRV, A

        with self.lock:
            self._reload()
            zone = self.zone
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        if not (qname == CLUSTER_DOMAIN or qname.endswith("." + CLUSTER_DOMAIN)):
            reply.header.rcode = RCODE.REFUSED
            return reply
        entries = zone.get(qname)
        if entries is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, value in entries:
            if rtype == "CNAME":
                reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(value), ttl=TTL))
                target = zone.get(value.rstrip(".").lower(), [])
                for t, v in target:
                    if t == "A" and qtype in ("A", "ANY"):
                        reply.add_answer(RR(value, QTYPE.A, rdata=A(v), ttl=TTL))
            elif rtype == "A" and qtype in ("A", "ANY"):
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(value), ttl=TTL))
            elif rtype == "SRV" and qtype in ("SRV", "ANY"):
                prio, weight, port, target = value.split()
                reply.add_answer(RR(qname, QTYPE.SRV, rdata=SRV(int(prio), int(weight), int(port), target), ttl=TTL))
        return reply


def serve(zone_path: str, port: int = 53) -> None:
    from dnslib.server import DNSLogger, DNSServer

    resolver = ZoneResolver(zone_path)
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    servers = [DNSServer(resolver, address="0.0.0.0", port=port, tcp=tcp, logger=quiet) for tcp in (False, True)]
    for s in servers:
        s.start_thread()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    for s in servers:
        s.stop()


# ---------------------------------------------------------------------------------------------
# The stub resolver (runs in the runner, with a socket in the client's namespace)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    name: str                  # the name that answered (after the search list)
    addresses: tuple[str, ...]
    cnames: tuple[str, ...]
    rcode: str


def resolve(netns: str, name: str, conf: ResolvConf, *, tcp: bool = False, timeout: float = 2.0) -> Answer:
    """Look `name` up like a libc resolver would with `conf`, from inside `netns`."""
    from dnslib import QTYPE, RCODE, DNSRecord

    from dataplane.netns import namespace

    last = Answer(name, (), (), "NXDOMAIN")
    for candidate in conf.candidates(name):
        q = DNSRecord.question(candidate, "A")
        with namespace.entered(netns):
            raw = q.send(conf.nameserver, 53, tcp=tcp, timeout=timeout)
        reply = DNSRecord.parse(raw)
        rcode = RCODE[reply.header.rcode]
        addrs = tuple(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)
        cnames = tuple(str(rr.rdata).rstrip(".") for rr in reply.rr if rr.rtype == QTYPE.CNAME)
        last = Answer(candidate, addrs, cnames, rcode)
        if rcode == "NOERROR" and (addrs or cnames):
            return last
    return last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dataplane-kube-dns", description="the scenario's kube-dns server")
    ap.add_argument("--zone", required=True, help="JSON zone file written by the runner")
    ap.add_argument("--port", type=int, default=53)
    args = ap.parse_args(argv)
    try:
        serve(args.zone, args.port)
    except OSError as exc:
        print(f"kube-dns: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live traffic through the emulated service dataplane (our engine behind a TUN) against kernel mode.

The same two-pod cluster (one node; a client pod and one server pod behind a ClusterIP) is built
twice, once per dataplane, and the same load runs against it from inside the client pod, in a
separate process (so the load generator does not share the runner's interpreter with the engine):

- udp: request/response over one connected UDP socket to the ClusterIP, `--window` requests in
  flight; packets/s = (requests + replies) answered per second, as the client sees them. For
  the emulated dataplane the engine's own counter (packets it read from the TUN per second) is
  reported too.
- blast: one UDP flow sent to the ClusterIP as fast as the client can, without waiting for
  answers; packets/s delivered = what the server pod received plus the answers the client pod
  received, per second (interface counters), i.e. what the service dataplane carried.
- conn: new TCP connections per second to the ClusterIP (connect, one request line, answer, close).

Target (issue 8): the emulated dataplane sustains at least 20,000 packets/s. On a shared 2-core
machine the load generator and the echo server take the cores the engine's thread needs, so the
engine's packets per CPU-second of its own thread is reported as well (its capacity). Needs root.

    .venv/bin/python -m benchmarks.scenario_emulated [--seconds 3] [--window 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from dataplane.netns import namespace
from dataplane.scenario import spec
from dataplane.scenario.runtime import ScenarioRun

SCENARIO = """\
name: bench-emulated
cluster: {podNetwork: host-gw}
traffic:
  - {name: warm, from: pod/client, to: {service: web, port: 80}, requests: 5}
expect:
  - {traffic: warm, reachable: true}
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Node, metadata: {name: node-1}, spec: {podCIDR: 10.244.1.0/24},
     status: {addresses: [{type: InternalIP, address: 192.168.100.11}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: web, labels: {app: web}},
     spec: {containers: [{name: w, ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: client}, spec: {containers: [{name: c}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: web},
     spec: {selector: {app: web}, ports: [{name: tcp, port: 80}, {name: udp, port: 80, protocol: UDP}]}}
"""

# Runs inside the client pod: prints one JSON line with what it measured.
LOADGEN = r"""
import json, socket, sys, time
mode, ip, port, seconds, window = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + seconds
if mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, port)); s.settimeout(0.5)
    sent = got = lost = 0
    for _ in range(window):
        s.send(b"x"); sent += 1
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        try:
            s.recv(2048); got += 1
        except socket.timeout:
            lost += 1
        s.send(b"x"); sent += 1
    elapsed = time.monotonic() - t0
    print(json.dumps({"answered": got, "sent": sent, "timeouts": lost, "seconds": elapsed}))
elif mode == "blast":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, port)); s.setblocking(False)
    sent = full = 0
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        for _ in range(64):
            try:
                s.send(b"x"); sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                full += 1
    print(json.dumps({"sent": sent, "busy": full, "seconds": time.monotonic() - t0}))
else:
    n = fail = 0
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        c = socket.socket(); c.settimeout(1.0)
        try:
            c.connect((ip, port)); c.sendall(b"x\n"); c.recv(2048); n += 1
        except OSError:
            fail += 1
        finally:
            c.close()
    print(json.dumps({"connections": n, "failed": fail, "seconds": time.monotonic() - t0}))
"""


def load(netns: str, mode: str, ip: str, port: int, seconds: float, window: int) -> dict:
    res = subprocess.run(namespace.command(netns, [sys.executable, "-c", LOADGEN, mode, ip, str(port), str(seconds),
                                                   str(window)]), capture_output=True, text=True, timeout=seconds + 30)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip()[-500:])
    return json.loads(res.stdout)


def rx_packets(netns: str, dev: str = "eth0") -> int:
    doc = json.loads(namespace.run(netns, ["ip", "-s", "-j", "link", "show", dev]).stdout)
    return int(doc[0]["stats64"]["rx"]["packets"])


def measure(dataplane: str, seconds: float, window: int) -> dict:
    run = ScenarioRun(spec.parse(SCENARIO, "bench-emulated.yaml"), dataplane=dataplane)
    try:
        run.build()
        client = next(p for p in run.pods.values() if p.plan.name == "client")
        svc = run.topology.service("default", "web")
        assert svc is not None and svc.cluster_ip
        engines = getattr(run.dataplane, "engines", {})
        before = sum(e.counters.received for e in engines.values())
        t0 = time.monotonic()
        udp = load(client.plan.netns, "udp", svc.cluster_ip, 80, seconds, window)
        engine_pps = (sum(e.counters.received for e in engines.values()) - before) / (time.monotonic() - t0)
        server = next(p for p in run.pods.values() if p.plan.name == "web")
        rx0 = rx_packets(server.plan.netns) + rx_packets(client.plan.netns)
        before = sum(e.counters.received for e in engines.values())
        cpu0 = sum(e.cpu_seconds for e in engines.values())
        blast = load(client.plan.netns, "blast", svc.cluster_ip, 80, seconds, window)
        delivered = (rx_packets(server.plan.netns) + rx_packets(client.plan.netns) - rx0) / blast["seconds"]
        handled = sum(e.counters.received for e in engines.values()) - before
        engine_blast = handled / blast["seconds"]
        engine_cpu = sum(e.cpu_seconds for e in engines.values()) - cpu0
        conn = load(client.plan.netns, "conn", svc.cluster_ip, 80, seconds, window)
        out = {"dataplane": dataplane,
               "udp_round_trips_per_s": round(udp["answered"] / udp["seconds"]),
               "packets_per_s": round(2 * udp["answered"] / udp["seconds"]),
               "udp_timeouts": udp["timeouts"],
               "blast_sent_per_s": round(blast["sent"] / blast["seconds"]),
               "blast_delivered_packets_per_s": round(delivered),
               "new_connections_per_s": round(conn["connections"] / conn["seconds"]),
               "failed_connections": conn["failed"]}
        if engines:
            out["engine_packets_per_s"] = round(engine_pps)
            out["engine_blast_packets_per_s"] = round(engine_blast)
            out["engine_blast_packets_per_cpu_second"] = round(handled / engine_cpu) if engine_cpu > 0 else None
            out["flow_cache_hits"] = sum(e.flows.hits for e in engines.values())
            out["engine_errors"] = sum(e.counters.errors for e in engines.values())
        return out
    finally:
        run.teardown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=64, help="UDP requests in flight")
    args = ap.parse_args(argv)
    rows = [measure(dp, args.seconds, args.window) for dp in ("kernel", "emulated")]
    for r in rows:
        print(json.dumps(r))
    k, e = rows
    print(json.dumps({"emulated_over_kernel_packets": round(e["packets_per_s"] / max(1, k["packets_per_s"]), 3),
                      "emulated_over_kernel_connections": round(e["new_connections_per_s"]
                                                                / max(1, k["new_connections_per_s"]), 3),
                      "target_packets_per_s": 20000, "target_met": e["packets_per_s"] >= 20000}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

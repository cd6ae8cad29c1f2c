"""CNI ADD+DEL wall time per pod: our plugins against the Go reference plugins, same config.

Both run through the same runtime client (libcni-equivalent, plugins exec'd as binaries), each in
its own scratch node namespace with an identical conflist (bridge + host-local; `--portmap` adds
portmap). Pods alternate ABBA (ours, go, go, ours, ...) so drift and noise hit both alike. Ours
go through the installed thin executables and a warm daemon started beforehand; `--fallback`
also measures the in-process path (no daemon), `--direct` a Python runtime that talks to the
daemon itself (DaemonExec, no exec). Target (issue 3): ours <= 1.5x Go at p50. Needs root.

    .venv/bin/python -m benchmarks.cni_speed [--pods 30] [--portmap] [--fallback] [--direct] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

GO_PLUGINS = "/usr/lib/cni"
TARGET_RATIO = 1.5


@dataclass
class Series:
    label: str
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        ms = sorted(s * 1000 for s in self.seconds)
        p95 = statistics.quantiles(ms, n=20, method="inclusive")[18] if len(ms) > 1 else ms[0]
        return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1),
                "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1)}


def conflist(data_dir: str, portmap: bool) -> bytes:
    plugins: list[dict] = [{"type": "bridge", "bridge": "cbr0", "isGateway": True, "ipMasq": False,
                            "ipam": {"type": "host-local", "dataDir": data_dir,
                                     "ranges": [[{"subnet": "10.244.0.0/16"}]],
                                     "routes": [{"dst": "0.0.0.0/0"}]}}]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return json.dumps({"cniVersion": "1.0.0", "name": "bench", "plugins": plugins}).encode()


def run(pods: int = 30, *, portmap: bool = False, fallback: bool = False, direct: bool = False,
        log: Callable[[str], None] = lambda s: None) -> dict:
    from dataplane.cni.runtime import CNIConfig, RuntimeConf, conf_list_from_bytes
    from dataplane.cni.runtime import daemon
    from dataplane.cni.runtime.direct import DaemonExec
    from dataplane.cni.runtime.install import install
    from dataplane.netns import namespace
    from dataplane.testing.sandbox import Sandbox

    with Sandbox(prefix="dpbn") as box:
        work = box.tempdir(tempfile.gettempdir())
        sock = os.path.join(box.tempdir("/run/dataplane"), "cni.sock")
        install(os.path.join(work, "fast"), socket=sock, autostart=False)
        install(os.path.join(work, "slow"), socket="")
        proc = box.spawn([sys.executable, "-m", "dataplane.cni.runtime.daemon", "serve", "--socket", sock])
        box.defer("daemon", lambda: daemon.stop(sock))
        deadline = time.monotonic() + 30
        while not daemon.running(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the plugin daemon did not start")
            time.sleep(0.05)

        impls = {"go": GO_PLUGINS, "ours": os.path.join(work, "fast")}
        if fallback:
            impls["ours-fallback"] = os.path.join(work, "slow")
        if direct:
            impls["ours-direct"] = os.path.join(work, "fast")
        nodes = {k: box.netns("n") for k in impls}
        clients = {k: CNIConfig([d], os.path.join(work, f"cache-{k}"),
                                executor=DaemonExec() if k == "ours-direct" else None) for k, d in impls.items()}
        nets = {k: conf_list_from_bytes(conflist(os.path.join(work, f"ipam-{k}"), portmap)) for k in impls}
        caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]} if portmap else {}
        series = {k: Series(k) for k in impls}
        names = list(impls)

        def one(kind: str, i: int, record: bool) -> None:
            pod = box.netns("p")
            rt = RuntimeConf(f"pod-{kind}-{i}", pod.path, capability_args=caps)
            with namespace.entered(nodes[kind].name):
                start = time.perf_counter()
                clients[kind].add_network_list(nets[kind], rt)
                clients[kind].del_network_list(nets[kind], rt)
                elapsed = time.perf_counter() - start
            namespace.remove(pod.name)
            if record:
                series[kind].seconds.append(elapsed)

        for kind in names:  # warm-up (page cache, bridge creation, daemon imports); not recorded
            one(kind, -1, False)
        for i in range(pods):
            order = names if i % 2 == 0 else list(reversed(names))  # A B | B A | A B ...
            for kind in order:
                one(kind, i, True)
            log(f"pod {i + 1}/{pods}: " + ", ".join(f"{k} {series[k].seconds[-1] * 1000:.0f} ms" for k in order))

    out = {k: s.summary() for k, s in series.items()}
    ratio = out["ours"]["p50_ms"] / out["go"]["p50_ms"]
    report = {"pods": pods, "config": "bridge+host-local" + ("+portmap" if portmap else ""), "series": out,
              "ratio_p50_ours_vs_go": round(ratio, 2), "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO}
    for extra in ("ours-fallback", "ours-direct"):
        if extra in out:
            report[f"ratio_p50_{extra}_vs_go"] = round(out[extra]["p50_ms"] / out["go"]["p50_ms"], 2)
    return report


def format_report(report: dict) -> str:
    lines = [f"CNI ADD+DEL per pod, {report['pods']} pods, {report['config']}, ABBA-alternated"]
    lines.append(f"{'implementation':<16}{'p50 ms':>10}{'p95 ms':>10}{'min ms':>10}{'max ms':>10}")
    for name, s in report["series"].items():
        lines.append(f"{name:<16}{s['p50_ms']:>10}{s['p95_ms']:>10}{s['min_ms']:>10}{s['max_ms']:>10}")
    verdict = "meets" if report["meets_target"] else "MISSES"
    lines.append(f"ratio ours/go at p50: {report['ratio_p50_ours_vs_go']} ({verdict} the <= {TARGET_RATIO} target)")
    for extra, what in (("ours-fallback", "in-process fallback (no daemon)"),
                        ("ours-direct", "runtime talking to the daemon directly (no exec, DaemonExec)")):
        if f"ratio_p50_{extra}_vs_go" in report:
            lines.append(f"ratio {extra}/go at p50: {report[f'ratio_p50_{extra}_vs_go']}  [{what}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--portmap", action="store_true", help="chain portmap with one hostPort mapping")
    parser.add_argument("--fallback", action="store_true", help="also measure the in-process path")
    parser.add_argument("--direct", action="store_true",
                        help="also measure a Python runtime using DaemonExec (no plugin exec at all)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cni_speed needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if opts.pods < 2:
        print("--pods must be at least 2", file=sys.stderr)
        return 2
    if not all(os.access(os.path.join(GO_PLUGINS, p), os.X_OK) for p in ("bridge", "host-local")):
        print(f"the Go reference plugins are not in {GO_PLUGINS} (apt-get install containernetworking-plugins)",
              file=sys.stderr)
        return 2
    log = (lambda s: None) if opts.quiet or opts.json else (lambda s: print(s, file=sys.stderr))
    report = run(opts.pods, portmap=opts.portmap, fallback=opts.fallback, direct=opts.direct, log=log)
    print(json.dumps(report, indent=2) if opts.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`dataplane bench`: the emulator's backends against the real kernel, in one run.

Presets: the full run (emulator N up to 50,000, kernel up to 5,000: under 15 minutes on a 2-core
VM), --quick (about a minute) and --smoke (the test suite's shape check). Writes results.json,
results.csv, report.md and PNG plots into --out.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import click

FULL_EMULATED = (10, 100, 1000, 5000, 10_000, 20_000, 50_000)
FULL_KERNEL = (10, 100, 1000, 5000)


@dataclass(frozen=True)
class Preset:
    name: str
    emulated: tuple[int, ...]
    kernel: tuple[int, ...]
    rounds: int
    kernel_rounds: int
    nft_max: int
    sync_max: int
    conntrack_connections: int
    python_packets: int


PRESETS = {
    "full": Preset("full", FULL_EMULATED, FULL_KERNEL, 7, 8, 50_000, 10_000, 1000, 300),
    "quick": Preset("quick", (10, 100, 1000), (10, 100), 5, 4, 1000, 1000, 1000, 200),
    "smoke": Preset("smoke", (10, 100, 500), (10, 100), 3, 2, 100, 500, 300, 100),
}


def _axis(text: str | None, default: tuple[int, ...], what: str) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{what}: a comma-separated list of service counts, e.g. 10,100,1000") from None
    if not values or min(values) < 2 or max(values) > 200_000:
        raise click.BadParameter(f"{what}: service counts must be between 2 and 200,000")
    return values


def _meta(preset: str) -> dict[str, object]:
    import numba
    import numpy

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__}
    for tool, argv in (("iptables", ["iptables-legacy", "--version"]), ("nft", ["nft", "--version"])):
        try:
            versions[tool] = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            versions[tool] = "not found"
    return {"preset": preset, "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu,
                        "hostname": platform.node()},
            "versions": versions, "endpoints_per_service": 10,
            "method": "emulator: thread CPU time, medians of ABBA rounds; kernel: cost per SYN between scratch "
                      "namespaces (see kernel_clock), sender pinned to one CPU, conntrack flushed per round, "
                      "ABBA first/last"}


@click.command("bench")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out"),
              show_default=True, help="Directory for results.json, results.csv, report.md and the plots.")
@click.option("--quick", is_flag=True, help="Small axis (N up to 1,000; kernel up to 100): about a minute.")
@click.option("--smoke", is_flag=True, hidden=True, help="The test suite's shape check (fewer rounds).")
@click.option("--services", "services_opt", metavar="N,N,...", help="Override the emulator's services axis.")
@click.option("--kernel-services", "kernel_opt", metavar="N,N,...", help="Override the kernel's services axis.")
@click.option("--no-kernel", is_flag=True, help="Skip the real-kernel anchors (no root needed).")
@click.option("--backends", default="all", show_default=True,
              help="Comma list among iptables,ipvs,nftables,conntrack,kernel (or 'all').")
def command(out_dir: Path, quick: bool, smoke: bool, services_opt: str | None, kernel_opt: str | None,
            no_kernel: bool, backends: str) -> None:
    """Measure the per-connection cost of every backend against N services, beside the real kernel."""
    preset = PRESETS["smoke" if smoke else "quick" if quick else "full"]
    preset = replace(preset, emulated=_axis(services_opt, preset.emulated, "--services"),
                     kernel=_axis(kernel_opt, preset.kernel, "--kernel-services"))
    wanted = {"iptables", "ipvs", "nftables", "conntrack", "kernel"} if backends == "all" else set(backends.split(","))
    unknown = wanted - {"iptables", "ipvs", "nftables", "conntrack", "kernel"}
    if unknown:
        raise click.BadParameter(f"unknown backend group(s) {', '.join(sorted(unknown))}", param_hint="--backends")
    if no_kernel:
        wanted.discard("kernel")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out_dir}: {exc.strerror}") from None
    run(preset, wanted, out_dir)


def run(preset: Preset, wanted: set[str], out_dir: Path) -> None:
    from benchmarks import bench_emulated as E
    from benchmarks import bench_kernel as KB
    from benchmarks.bench_report import write_all
    from benchmarks.bench_stats import Record, derived

    t_start = time.monotonic()
    _exit_on_sigterm()
    meta = _meta(preset.name)
    skipped: list[str] = []
    plan = E.EmulatedPlan(services=preset.emulated, rounds=preset.rounds, nft_max=preset.nft_max,
                          sync_max=preset.sync_max, conntrack_connections=preset.conntrack_connections,
                          python_packets=preset.python_packets)
    states: dict[int, object] = {}

    def state(n: int):  # type: ignore[no-untyped-def]
        if n not in states:
            states[n] = E.state_for(n)
        return states[n]

    def forget(keep: set[int]) -> None:
        for n in list(states):
            if n not in keep:
                del states[n]

    records: list[Record] = []
    tasks: list[tuple[str, Callable[[], list[Record] | None]]] = []
    kernel_why = KB.missing() if "kernel" in wanted else None
    if "kernel" in wanted and kernel_why:
        skipped.append(f"kernel anchors: {kernel_why}")
    for n in preset.emulated:
        plus = n + 1 if n <= plan.sync_max else None
        if "iptables" in wanted:
            for layout in ("classic", "modern"):
                tasks.append((f"iptables-{layout} N={n}", lambda n=n, layout=layout, plus=plus: E.iptables_point(
                    n, layout, state(n), plan, state(plus) if plus else None)))
        if "ipvs" in wanted:
            tasks.append((f"ipvs-rr N={n}", lambda n=n: E.ipvs_rr_point(n, state(n), plan)))
            tasks.append((f"ipvs-sh N={n}", lambda n=n: E.ipvs_sh_point(n, state(n), plan)))
        if "nftables" in wanted and n <= plan.nft_max:
            tasks.append((f"nftables N={n}", lambda n=n, plus=plus: E.nftables_point(
                n, state(n), plan, state(plus) if plus else None)))
        if "conntrack" in wanted:
            tasks.append((f"conntrack N={n}", lambda n=n: E.conntrack_point(n, plan)))
        tasks.append(("free", lambda n=n: forget(set(preset.kernel) | {k + 1 for k in preset.kernel}
                                                 | {k + 2 for k in preset.kernel}) or []))
    if "nftables" in wanted and max(preset.emulated) > plan.nft_max:
        skipped.append(f"emulated-nftables above N={plan.nft_max}: parsing the generated nft text in Python "
                       "takes about 6 ms per service")
    if "kernel" in wanted and not kernel_why:
        kplan = KB.KernelPlan(services=preset.kernel, rounds=preset.kernel_rounds)
        meta["kernel_clock"] = KB.CLOCK
        for n in preset.kernel:
            for kind in kplan.backends:
                tasks.append((f"kernel {kind} N={n}", lambda n=n, kind=kind: _kernel(KB, kind, n, kplan, state)))

    for label, task in _progress(tasks):
        try:
            got = task()
        except RuntimeError as exc:
            skipped.append(f"{label}: {exc}")
            continue
        if got is None:
            skipped.append(f"{label}: module not available")
        elif got:
            records.extend(got)
    records += E.derive(records)
    records += _kernel_derived(records, derived)
    meta["duration_s"] = round(time.monotonic() - t_start, 1)
    meta["skipped"] = skipped
    files = write_all(out_dir, meta, records)
    click.echo(f"{len(records)} records in {meta['duration_s']} s; wrote " + ", ".join(str(f) for f in files))
    for s in skipped:
        click.echo(f"skipped: {s}", err=True)


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every Sandbox removes its namespaces on the way out."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, stop)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (embedded use): leave the handlers alone
        pass


def _progress(tasks: list[tuple[str, Callable[[], object]]]):  # type: ignore[no-untyped-def]
    """A progress bar on a terminal; one line per step otherwise (logs, CI)."""
    shown = [t for t in tasks if t[0] != "free"]
    if sys.stderr.isatty():
        with click.progressbar(tasks, label="dataplane bench", file=sys.stderr, show_pos=True,
                               item_show_func=lambda t: t[0] if t else "") as bar:
            yield from bar
        return
    i = 0
    t0 = time.monotonic()
    for label, task in tasks:
        if label != "free":
            i += 1
            click.echo(f"[{i}/{len(shown)} {time.monotonic() - t0:6.1f}s] {label}", err=True)
        yield label, task


def _kernel(KB, kind: str, n: int, kplan, state):  # type: ignore[no-untyped-def]
    from dataplane.proxy.iptables.generator import GeneratorOptions, ordered_service_ports

    states = (state(n), state(n + 1), state(n + 2))
    ordered = [(s.cluster_ip, s.port) for s in ordered_service_ports(states[0], GeneratorOptions(layout=KB.LAYOUT))]
    return KB.kernel_point(kind, n, states, kplan, ordered)


def _kernel_derived(records, derived):  # type: ignore[no-untyped-def]
    """Kernel cores at 1,000 conn/s from the mean of the first and last targets (a uniform target's
    expected cost for a linear walk; the same for a flat one)."""
    out = []
    by = {(r.backend, r.services, r.position, r.metric): r for r in records}
    kernels = sorted({r.backend for r in records if r.backend.startswith("kernel-") and r.metric == "new_conn_ns"})
    for b in kernels:
        ns = sorted({r.services for r in records if r.backend == b and r.metric == "new_conn_ns"})
        base = None
        for n in ns:
            first, last = by.get((b, n, "first", "new_conn_ns")), by.get((b, n, "last", "new_conn_ns"))
            if not (first and last):
                continue
            cores = (first.value + last.value) / 2 * 1e-9 * 1000
            base = cores if base is None else base
            out.append(derived(b, n, "random", "cores_at_1000cps", cores, "cores",
                               "(first + last) / 2 x 1,000/s, whole path per SYN"))
            out.append(derived(b, n, "random", "extra_cores_at_1000cps", cores - base, "cores",
                               f"minus the same at N={ns[0]}"))
            est = [r.value for p in ("first", "last") if (r := by.get((b, n, p, "established_ns")))]
            if est:
                new = (first.value + last.value) / 2
                hit = sum(est) / len(est)
                for k in (1, 100):
                    out.append(derived(b, n, "random", f"ns_per_request_k{k}", (new + (k - 1) * hit) / k, "ns",
                                       f"(new + {k - 1} x established packet) / {k}"))
    return out

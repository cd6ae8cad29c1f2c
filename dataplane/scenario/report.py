"""The human summary of a run: the cluster, one line per flow, one line per expectation."""

from __future__ import annotations

from dataplane.scenario.runtime import Report

TRACE_LINES_SHOWN = 40


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*map(str, r)) for r in rows)]


def summary(report: Report) -> str:
    s = report.settings
    out = [f"scenario {report.scenario} (run {report.run_id}): {s.get('dataplane')} dataplane, "
           f"proxy {s.get('proxyMode')}, pod network {s.get('podNetwork')}"]
    out += _table([[p["name"], p["node"], p["ip"], "yes" if p["ready"] else "no"] for p in report.pods],
                  ["pod", "node", "ip", "ready"])
    out.append("")
    out += _table([[f.traffic, f"{f.source} ({f.client_ip})", f"{f.target}/{f.protocol}", f.mode,
                    f"{len(f.answered)}/{len(f.outcomes)}",
                    " ".join(f"{k}={v}" for k, v in f.counts().items()) or "-",
                    " ".join(f"{k}={v}" for k, v in f.errors().items()) or "-"] for f in report.flows],
                  ["traffic", "from", "to", "mode", "answered", "by pod", "errors"])
    out.append("")
    out += _table([["PASS" if v.passed else "FAIL", v.traffic, v.target, v.check, v.detail] for v in report.verdicts],
                  ["result", "traffic", "to", "check", "detail"])
    for traffic, per_node in report.traces.items():
        source = "the engine's trace" if report.settings.get("dataplane") == "emulated" else "nft monitor trace"
        out.append(f"\ntrace of {traffic} ({source}, first packets per node):")
        for node, lines in per_node.items():
            out.append(f"  {node}: {len(lines)} trace line(s)")
            out += [f"    {ln}" for ln in lines[:TRACE_LINES_SHOWN]]
    for e in report.errors:
        out.append(f"error: {e}")
    t = report.timings
    passed = sum(v.passed for v in report.verdicts)
    out.append(f"\n{passed}/{len(report.verdicts)} expectations passed; build {t.get('buildSeconds', 0):.2f} s, "
               f"traffic {t.get('trafficSeconds', 0):.2f} s, teardown {t.get('teardownSeconds', 0):.2f} s: "
               + ("PASSED" if report.passed else "FAILED"))
    return "\n".join(out)

"""`--trace`: the rule-by-rule path of chosen flows through the real kernel (kernel dataplane).

For the traced traffic entry, every node namespace gets a tiny nft table that sets `nftrace` on
packets from the client's address (at priority -400, before anything else), and an
`nft monitor trace` process (PID recorded in the run state) prints each rule those packets
traverse. That covers both kernel modes: kube-proxy's nftables table, and its iptables rules,
which iptables-nft stores as nf_tables rules too. The table and the monitors go when the flow is
done (and with the node namespace in any case).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

from dataplane.netns import namespace
from dataplane.scenario.state import RunState, die_with_parent, process_start_time, stop_process_group
from dataplane.scenario.topology import NodePlan

TABLE = "dataplane-trace"
MAX_LINES = 2000


@dataclass
class KernelTrace:
    state: RunState
    nodes: tuple[NodePlan, ...]
    client_ip: str
    _monitors: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def start(self) -> None:
        ruleset = (f"table ip {TABLE} {{\n"
                   f"  chain pre {{ type filter hook prerouting priority -400; ip saddr {self.client_ip} meta nftrace set 1; }}\n"
                   f"  chain out {{ type filter hook output priority -400; ip saddr {self.client_ip} meta nftrace set 1; }}\n"
                   "}\n")
        for node in self.nodes:
            res = namespace.run(node.netns, ["nft", "-f", "-"], input=ruleset, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"cannot enable tracing on {node.name}: {res.stderr.strip()}")
            record = self.state.intend("process", what=f"nft monitor trace on {node.name}", pid=None, start=None)
            proc = subprocess.Popen(namespace.command(node.netns, ["nft", "monitor", "trace"]), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=die_with_parent)
            self.state.complete(record, pid=proc.pid, start=process_start_time(proc.pid))
            self._monitors[node.name] = proc
        time.sleep(0.3)  # the monitors must be listening before the first packet

    def stop(self) -> dict[str, list[str]]:
        time.sleep(0.2)  # let the last trace events arrive
        out: dict[str, list[str]] = {}
        for node in self.nodes:
            proc = self._monitors.pop(node.name, None)
            if proc is None:
                continue
            stop_process_group(proc.pid, process_start_time(proc.pid))
            text = proc.communicate()[0] if proc.stdout else ""
            self.state.records[:] = [r for r in self.state.records
                                     if not (r["kind"] == "process" and r.get("pid") == proc.pid)]
            self.state.save()
            lines = [ln for ln in text.splitlines() if ln.startswith("trace id") and TABLE not in ln]
            out[node.name] = lines[:MAX_LINES]
            namespace.run(node.netns, ["nft", "delete", "table", "ip", TABLE], check=False)
        return out

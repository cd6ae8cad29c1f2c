"""`dataplane proxy trace`: what one node does with a packet, rule by rule.

The rules come from an iptables-save dump or are generated from Kubernetes objects; the node is
described by kube-proxy's own flags (node IPs, cluster CIDR). The packet goes through the engine's
pipeline (conntrack, NAT, the reference evaluator with traces), so the answer is what the kernel
would do: verdict, endpoint after DNAT, masquerade, and every rule tested on the way, like the
kernel's TRACE target. Probabilistic jumps are either sampled (seeded) or enumerated.
nftables rulesets (generated, or `nft list ruleset` / `nft -j` dumps) go through the same pipeline
with the nftables evaluator; their `numgen random` outcomes are enumerated with exact shares.

The JSON field names (`verdict`, `endpoints`, `masquerade`, `rules`) are an interface other tools
script against: keep them.
"""

from dataplane.proxy.trace.common import (CLUSTER_IFACE, UPLINK_IFACE, Flow, NodeSpec, TraceInputError,
                                          TraceResult, render_text)
from dataplane.proxy.trace.iptables import ScriptedRandom, trace, trace_flows
from dataplane.proxy.trace.ipvs import trace_ipvs, trace_ipvs_flows
from dataplane.proxy.trace.nftables import (ScriptedNumgen, numgen_probability, parse_nft, trace_nft,
                                            trace_nft_flows)

__all__ = ["CLUSTER_IFACE", "UPLINK_IFACE", "Flow", "NodeSpec", "ScriptedNumgen", "ScriptedRandom",
           "TraceInputError", "TraceResult", "numgen_probability", "parse_nft", "render_text", "trace",
           "trace_flows", "trace_ipvs", "trace_ipvs_flows", "trace_nft", "trace_nft_flows"]

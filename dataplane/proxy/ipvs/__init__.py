"""kube-proxy's IPVS mode, emulated: the kernel's IPVS (which this kernel does not have) and the
layout kube-proxy programs into it.

- `sched/`: the kernel's schedulers (rr, wrr, lc, wlc, sed, nq, sh, dh, mh, lblc, lblcr), each
  following its net/netfilter/ipvs/ip_vs_<name>.c; `hashing`: hash_32, hsiphash, the IPv6 fold.
- `dest`, `service`: real servers and virtual services (ip_vs_ctl.c), newest real server first.
- `conn`: the connection table, TCP state machine, counters, templates (ip_vs_conn.c,
  ip_vs_proto_tcp.c); `core`: the packet path (ip_vs_core.c), returning engine `Decision`s.
- `ipvsadm`, `ipset`: `ipvsadm-save -n` / `ipvsadm -Ln` and `ipset save` text, both ways.
- `generator`: the model -> virtual servers, ipsets, kube-ipvs0 addresses, iptables rules.
- `lookup`: the numba (proto, VIP, port) hash table (benchmarks/ipvs_lookup.py).
"""

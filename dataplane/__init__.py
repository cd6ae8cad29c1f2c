"""dataplane: a packet-level emulator of the Kubernetes node network.

Subpackages, top to bottom of the data flow:
  k8s       the Kubernetes objects kube-proxy and the runner act on (Service, EndpointSlice, ...)
  proxy     the service proxy control plane: model -> iptables / ipvs / nftables rules, and parsers
  engine    the packet engine: netfilter hooks, conntrack, NAT and rule matching (numba fast path)
  scenario  the scenario runner: clusters of network namespaces wired through our CNI plugins
  cni       the CNI spec, our plugins (bridge, host-local, loopback, ptp, portmap) and a runtime client
  netns     pyroute2 helpers for namespaces, links, addresses and routes shared by all of the above
  testing   fixtures and the leak check shared by the tests, the scenarios and the benchmarks
"""

__version__ = "0.1.0"

"""The scenario runner: emulated Kubernetes clusters on one machine, with real traffic.

Declarative side (no side effects): `schema` (YAML with line numbers), `spec` (the scenario file),
`topology` (scheduling, names, ClusterIP/NodePort allocation), `endpoints` (the EndpointSlice
controller), `cluster_model` (the runner's objects as `dataplane.k8s` for the proxy generators),
`dns` records.
Runtime side: `state` (everything recorded before it is created; `clean`), `build` (namespaces,
underlay, l2/host-gw/vxlan, pods), `cni` (CNI through the project's runtime client and plugins),
`workload` (the per-pod server), `dataplanes` (kernel iptables/nftables), `emulated` (our engine
behind a TUN per node, iptables/nftables/ipvs; `emulated_flows` its flow cache),
`events` (scale, delete, readiness, rollout), `traffic` + `expect`, `capture` (pcap per node),
`trace` (nft monitor trace; the emulated dataplane traces its engine), `runtime` (ScenarioRun), `report`, `picture` (SVG), `cli`.
"""

"""pyroute2 helpers for network namespaces, links, addresses and routes.

Shared by the CNI plugins, the scenario runner and the test fixtures. Modules are named by
the kernel object they handle (pyroute2's habit): `namespace`, `link`.
"""

"""Plugin executables, drop-in compatible with the reference Go plugins.

Each module (bridge, host_local, loopback, ptp, portmap) exposes `PLUGIN` (a PluginSpec for
`dataplane.cni.spec.skeleton.dispatch`) and `main()`; `python -m dataplane.cni.plugins.<name>`
runs one as a CNI executable.
"""

"""`dataplane cni`: cnitool's commands on our libcni-equivalent client, plus `install` and `daemon`.

    dataplane cni add|check|del NET NETNS     (NETCONFPATH, CNI_PATH, CNI_IFNAME, CNI_ARGS, CAP_ARGS)
    dataplane cni gc|status NET
    dataplane cni install --dir DIR
    dataplane cni daemon status|stop|serve

As with cnitool, the container ID is `cnitool-` + the first 20 hex digits of sha512(netns path), and
plugins run in this process's network namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import click

DEFAULT_NETCONFPATH = "/etc/cni/net.d"
DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"


def container_id_for(netns: str) -> str:
    """cnitool's container ID for a netns path."""
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def parse_cni_args(text: str) -> list[tuple[str, str]]:
    """cnitool's CNI_ARGS parsing: `K=V;K2=V2`, empty keys or values rejected."""
    pairs = []
    for pair in text.split(";"):
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise click.UsageError(f'invalid CNI_ARGS pair "{pair}"')
        pairs.append((kv[0], kv[1]))
    return pairs


def parse_cap_args(text: str) -> dict[str, Any]:
    """CAP_ARGS as cnitool reads it: into Go maps, so every object ends up with sorted keys."""
    try:
        value = json.loads(text, object_pairs_hook=lambda pairs: dict(sorted(pairs)))
    except ValueError as exc:
        raise click.UsageError(f"CAP_ARGS is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.UsageError("CAP_ARGS must be a JSON object, e.g. '{\"portMappings\": [...]}'")
    return value


def resolve_netns(netns: str) -> str:
    """An absolute path (cnitool uses filepath.Abs); a bare name of an `ip netns` namespace also works."""
    if "/" not in netns and not os.path.exists(netns) and os.path.exists(os.path.join("/run/netns", netns)):
        return os.path.join("/run/netns", netns)
    return os.path.abspath(netns)


def _fail(exc: Exception) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(1)


class _Ctx:
    def __init__(self, conf_dir: str, cni_path: str, cache_dir: str, host_netns: str | None) -> None:
        self.conf_dir, self.cni_path, self.cache_dir = conf_dir, cni_path, cache_dir
        self.host_netns = host_netns

    def host(self):  # type: ignore[no-untyped-def]
        """Where plugins run: this process's namespace, or --host-netns (a scratch "node")."""
        import contextlib

        if not self.host_netns:
            return contextlib.nullcontext()
        from dataplane.netns import namespace

        if not os.path.exists(namespace.path_of(self.host_netns)):
            raise click.UsageError(f"--host-netns: no network namespace {self.host_netns!r}")
        return namespace.entered(self.host_netns)

    def client_and_net(self, name: str):  # type: ignore[no-untyped-def]
        from dataplane.cni.runtime import CNIConfig, load_conf_list

        net = load_conf_list(self.conf_dir, name)
        paths = [p for p in self.cni_path.split(":") if p]
        return CNIConfig(paths, self.cache_dir), net


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--conf-dir", envvar="NETCONFPATH", default=DEFAULT_NETCONFPATH, show_default=True,
              help="Folder of .conflist/.conf files [env NETCONFPATH].")
@click.option("--cni-path", envvar="CNI_PATH", default=DEFAULT_CNI_PATH, show_default=True,
              help="':'-separated plugin folders [env CNI_PATH].")
@click.option("--cache-dir", default="/var/lib/cni", show_default=True,
              help="Result cache root (results/<net>-<id>-<ifname>), as libcni.")
@click.option("--host-netns", default=None, metavar="NAME|PATH",
              help="Run the plugins from this network namespace (a scratch node) instead of this one.")
@click.pass_context
def command(ctx: click.Context, conf_dir: str, cni_path: str, cache_dir: str, host_netns: str | None) -> None:
    """Run CNI plugins like a container runtime does (cnitool/libcni semantics)."""
    ctx.obj = _Ctx(conf_dir, cni_path, cache_dir, host_netns)


def _attachment_options(fn):  # type: ignore[no-untyped-def]
    fn = click.option("--ifname", "-i", envvar="CNI_IFNAME", default="eth0", show_default=True,
                      help="Interface in the container [env CNI_IFNAME].")(fn)
    fn = click.option("--args", "cni_args", envvar="CNI_ARGS", default="",
                      help="CNI_ARGS, 'K=V;K2=V2' [env CNI_ARGS].")(fn)
    fn = click.option("--cap-args", envvar="CAP_ARGS", default="",
                      help="Capability arguments as a JSON object [env CAP_ARGS].")(fn)
    fn = click.option("--container-id", default="", help="Default: cnitool-<sha512(netns)[:20]>.")(fn)
    return fn


def _runtime_conf(netns: str, ifname: str, cni_args: str, cap_args: str, container_id: str):  # type: ignore[no-untyped-def]
    from dataplane.cni.runtime import RuntimeConf

    path = resolve_netns(netns)
    return RuntimeConf(container_id or container_id_for(path), path, ifname,
                       parse_cni_args(cni_args) if cni_args else [],
                       parse_cap_args(cap_args) if cap_args else {})


def _attachment_command(verb: str):  # type: ignore[no-untyped-def]
    @command.command(verb, help=f"{verb.upper()} network NET for the namespace NETNS (path or ip-netns name).")
    @click.argument("net")
    @click.argument("netns")
    @_attachment_options
    @click.pass_obj
    def run(obj: _Ctx, net: str, netns: str, ifname: str, cni_args: str, cap_args: str, container_id: str) -> None:
        from dataplane.cni.runtime import CNIRuntimeError

        rt = _runtime_conf(netns, ifname, cni_args, cap_args, container_id)
        try:
            client, conf = obj.client_and_net(net)
            if verb != "add" and not cni_args and not cap_args:
                # Like podman (not cnitool): replay the ADD's CNI_ARGS and capability args from the
                # cache, so that e.g. portmap's DEL sees its portMappings and removes its rules.
                cached = client.get_network_list_cached_config(conf, rt)
                if cached is not None:
                    rt = cached[1]
            with obj.host():
                if verb == "add":
                    click.echo(json.dumps(client.add_network_list(conf, rt), indent=4))
                elif verb == "check":
                    client.check_network_list(conf, rt)
                else:
                    client.del_network_list(conf, rt)
        except (CNIRuntimeError, OSError) as exc:
            _fail(exc)
    return run


for _verb in ("add", "check", "del"):
    _attachment_command(_verb)


@command.command("gc")
@click.argument("net")
@click.argument("netns", required=False)
@click.option("--keep", multiple=True, metavar="CONTAINERID/IFNAME",
              help="A still-valid attachment (repeatable). Without any, every cached attachment of NET is deleted, "
                   "as with cnitool gc.")
@click.pass_obj
def gc(obj: _Ctx, net: str, netns: str | None, keep: tuple[str, ...]) -> None:
    """Garbage-collect NET: DEL stale cached attachments, then GC each plugin (CNI >= 1.1.0)."""
    from dataplane.cni.runtime import CNIRuntimeError, GCAttachment

    valid = None
    if keep:
        valid = []
        for item in keep:
            cid, sep, ifname = item.partition("/")
            if not sep or not cid or not ifname:
                raise click.UsageError(f"--keep wants CONTAINERID/IFNAME, got {item!r}")
            valid.append(GCAttachment(cid, ifname))
    try:
        client, conf = obj.client_and_net(net)
        with obj.host():
            client.gc_network_list(conf, valid)
    except (CNIRuntimeError, OSError) as exc:
        _fail(exc)


@command.command("status")
@click.argument("net")
@click.argument("netns", required=False)
@click.pass_obj
def status(obj: _Ctx, net: str, netns: str | None) -> None:
    """Ask every plugin of NET whether it is ready for ADD (CNI >= 1.1.0)."""
    from dataplane.cni.runtime import CNIRuntimeError

    try:
        client, conf = obj.client_and_net(net)
        with obj.host():
            client.get_status_network_list(conf)
    except (CNIRuntimeError, OSError) as exc:
        _fail(exc)


@command.command("install")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Where to put the plugin executables (created if missing).")
@click.option("--plugin", "plugins", multiple=True,
              help="Install only these (repeatable). Default: bridge, host-local, loopback, ptp, portmap.")
@click.option("--socket", default=None, help="Daemon socket baked into the plugins [default /run/dataplane/cni.sock].")
@click.option("--no-daemon", is_flag=True, help="Always run plugins in-process (no warm daemon).")
@click.option("--no-autostart", is_flag=True, help="Use a running daemon, but never start one.")
@click.option("--idle-timeout", type=float, default=None, help="Seconds an auto-started daemon stays idle.")
def install_cmd(directory: str, plugins: tuple[str, ...], socket: str | None, no_daemon: bool,
                no_autostart: bool, idle_timeout: float | None) -> None:
    """Install the plugin executables into DIR, for a runtime's plugin path (cni_plugin_dirs, CNI_PATH)."""
    from dataplane.cni.runtime import CNIRuntimeError
    from dataplane.cni.runtime import daemon, pluginhost
    from dataplane.cni.runtime.install import install

    try:
        done = install(directory, plugins or pluginhost.STANDARD,
                       socket="" if no_daemon else (socket or daemon.DEFAULT_SOCKET),
                       autostart=not no_autostart,
                       idle_timeout=daemon.DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout)
    except (CNIRuntimeError, OSError) as exc:
        _fail(exc)
        return
    for name in done.plugins:
        click.echo(os.path.join(done.directory, name))
    mode = f"daemon socket {done.socket}" if done.socket else "in-process only"
    click.echo(f"interpreter {done.python}; {mode}", err=True)


@command.group("daemon")
def daemon_group() -> None:
    """The warm plugin daemon behind the installed executables."""


@daemon_group.command("status")
@click.option("--socket", default=None)
def daemon_status(socket: str | None) -> None:
    from dataplane.cni.runtime import daemon

    sock = socket or daemon.DEFAULT_SOCKET
    pid = daemon.read_pid(sock)
    if pid and daemon.running(sock):
        click.echo(f"running, pid {pid}, socket {sock}")
    else:
        click.echo(f"not running (socket {sock})")
        sys.exit(3)


@daemon_group.command("stop")
@click.option("--socket", default=None)
def daemon_stop(socket: str | None) -> None:
    from dataplane.cni.runtime import daemon

    pid = daemon.stop(socket or daemon.DEFAULT_SOCKET)
    click.echo(f"stopped pid {pid}" if pid else "no daemon running")


@daemon_group.command("serve")
@click.option("--socket", default=None)
@click.option("--idle-timeout", type=float, default=None)
def daemon_serve(socket: str | None, idle_timeout: float | None) -> None:
    """Run the daemon in the foreground (Ctrl-C stops it)."""
    from dataplane.cni.runtime import daemon

    argv = ["serve", "--socket", socket or daemon.DEFAULT_SOCKET]
    if idle_timeout is not None:
        argv += ["--idle-timeout", str(idle_timeout)]
    sys.exit(daemon.main(argv))

"""host-local's view of a network config (the reference's allocator/config.go)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from dataplane.cni.spec import args as cni_args
from dataplane.cni.spec.errors import PluginError
from dataplane.cni.spec.types import IPAddress, Route, parse_cidr, parse_ip
from dataplane.cni.ipam.host_local.ranges import RangeError, RangeSet

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


@dataclass
class IPAMConfig:
    name: str
    range_sets: list[RangeSet]
    requested: list[IPAddress] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""


def parse_requested_ip(text: object) -> IPAddress:
    """`<ip>[/<prefix>]`; the prefix is ignored for matching, as in the reference."""
    if not isinstance(text, str):
        raise ValueError(f"invalid IP address: {text}")
    try:
        return ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address: {text}") from None


def load(config: dict[str, Any], env_args: str) -> IPAMConfig:
    """Build the IPAM config from the whole netconf, CNI_ARGS, args.cni.ips and runtimeConfig."""
    ipam = config.get("ipam")
    if ipam is None:
        raise PluginError("IPAM config missing 'ipam' key")
    if not isinstance(ipam, dict):
        raise PluginError("IPAM config 'ipam' must be a JSON object")
    requested: list[IPAddress] = []
    try:
        env = cni_args.parse(env_args, {"IP": parse_requested_ip})
        if "IP" in env:
            requested.append(env["IP"])
        requested += [parse_requested_ip(ip) for ip in _list(_dig(config, "args", "cni"), "ips", "args.cni.ips")]
        runtime = config.get("runtimeConfig") or {}
        if not isinstance(runtime, dict):
            raise ValueError("runtimeConfig must be a JSON object")
        requested += [parse_requested_ip(ip) for ip in _list(runtime, "ips", "runtimeConfig.ips")]
        sets_raw: list[Any] = list(_list(runtime, "ipRanges", "runtimeConfig.ipRanges"))
        if isinstance(ipam.get("subnet"), str) and ipam.get("subnet"):
            sets_raw.append([{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}])
        sets_raw += _list(ipam, "ranges", "ipam.ranges")
        routes = [_route(r) for r in _list(ipam, "routes", "ipam.routes")]
        data_dir = _string(ipam, "dataDir") or DEFAULT_DATA_DIR
        resolv_conf = _string(ipam, "resolvConf")
    except ValueError as exc:
        raise PluginError(str(exc)) from None
    if not sets_raw:
        raise PluginError("no IP ranges specified")
    range_sets: list[RangeSet] = []
    for i, raw in enumerate(sets_raw):
        try:
            range_sets.append(RangeSet.parse(raw))
        except RangeError as exc:
            raise PluginError(f"invalid range set {i}: {exc}") from None
    for i, a in enumerate(range_sets):
        for j in range(i + 1, len(range_sets)):
            if a.overlaps(range_sets[j]):
                raise PluginError(f"range set {i} overlaps with {j}")
    return IPAMConfig(str(config.get("name", "")), range_sets, requested, routes, data_dir, resolv_conf)


def _dig(obj: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def _list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"ipam.{key} must be a string")
    return value


def _route(obj: Any) -> Route:
    if not isinstance(obj, dict):
        raise ValueError("ipam.routes[] must be objects")
    return Route(parse_cidr(obj.get("dst")), parse_ip(obj["gw"]) if obj.get("gw") else None)

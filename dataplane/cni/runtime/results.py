"""Results as plain JSON objects, converted between spec versions like cni pkg/types/{040,100}.

The runtime only needs what libcni does with results: read a plugin's stdout (a result without
`cniVersion` is in the config's version), hand it to the next plugin, cache it, and replay it as
`prevResult` converted to the list's version.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from dataplane.cni.runtime import versions
from dataplane.cni.runtime.errors import DECODING_FAILURE, RuntimeClientError

_V1_ONLY_IFACE = ("mtu", "socketPath", "pciID")
_V1_ONLY_ROUTE = ("mtu", "advmss", "priority", "table", "scope")


def parse(stdout: bytes, config_version: str) -> dict[str, Any]:
    """A plugin's ADD output as a result object; a missing cniVersion means the config's."""
    try:
        obj = json.loads(stdout)
    except ValueError as exc:
        raise RuntimeClientError(f"failed to decode plugin result: {exc}", DECODING_FAILURE,
                                 stdout.decode(errors="replace")[:200]) from None
    if not isinstance(obj, dict):
        raise RuntimeClientError("failed to decode plugin result: not a JSON object", DECODING_FAILURE)
    if not obj.get("cniVersion"):
        obj = {"cniVersion": config_version or "0.1.0", **obj}
    return obj


def _family(address: str) -> str:
    return "4" if isinstance(ipaddress.ip_interface(address), ipaddress.IPv4Interface) else "6"


def _is_rich(version: str) -> bool:
    return versions.at_least(version, "0.3.0")


def convert(result: dict[str, Any], target: str) -> dict[str, Any]:
    """`result` re-expressed in spec version `target` (a new object; the input is untouched)."""
    source = result.get("cniVersion") or "0.1.0"
    if source == target:
        return json.loads(json.dumps(result))
    if not (_is_rich(source) and _is_rich(target)):
        raise RuntimeClientError(f'cannot convert result from version "{source}" to "{target}"',
                                 DECODING_FAILURE, "only 0.3.0 and later results are converted")
    to_v1 = versions.at_least(target, "1.0.0")
    out: dict[str, Any] = {"cniVersion": target}
    if result.get("interfaces"):
        ifaces = []
        for iface in result["interfaces"]:
            copy = dict(iface)
            if not to_v1:
                for k in _V1_ONLY_IFACE:
                    copy.pop(k, None)
            ifaces.append(copy)
        out["interfaces"] = ifaces
    if result.get("ips"):
        ips = []
        for ip in result["ips"]:
            rest = {k: v for k, v in ip.items() if k != "version"}
            if to_v1:
                ips.append(rest)
            else:
                ips.append({"version": ip.get("version") or _family(ip["address"]), **rest})
        out["ips"] = ips
    if result.get("routes"):
        routes = []
        for route in result["routes"]:
            copy = dict(route)
            if not to_v1:
                for k in _V1_ONLY_ROUTE:
                    copy.pop(k, None)
            routes.append(copy)
        out["routes"] = routes
    out["dns"] = result.get("dns") or {}
    return out

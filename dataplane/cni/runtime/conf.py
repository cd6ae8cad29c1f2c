"""Network configurations: load `.conflist`/`.conf` files the way libcni does (cni libcni/conf.go).

A list is chosen by its `name` among `*.conflist` files sorted by file name, then among legacy
single-plugin `*.conf`/`*.json` files (up-converted to a one-plugin list). The list's protocol
version is negotiated from `cniVersion` and `cniVersions` (the highest this client speaks).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from dataplane.cni.runtime import versions
from dataplane.cni.runtime.errors import INVALID_NETWORK_CONFIG, ConfigError, NotFoundError

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


@dataclass
class NetworkConfig:
    """One plugin object of a list (or a legacy single config), kept as parsed JSON."""

    conf: dict[str, Any]

    @property
    def type(self) -> str:
        return self.conf["type"]

    @property
    def capabilities(self) -> dict[str, bool]:
        return self.conf.get("capabilities") or {}


@dataclass
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: list[NetworkConfig]
    raw: bytes  # the bytes the list was loaded from; stored (base64) in the result cache
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""  # file it came from, for messages
    extra: dict[str, Any] = field(default_factory=dict)


def _bool_field(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"error parsing configuration list: invalid value {value!r} for {key}",
                      INVALID_NETWORK_CONFIG)


def _negotiate(raw: dict[str, Any]) -> str:
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise ConfigError("error parsing configuration list: invalid cniVersion type "
                          f"{type(version).__name__}", INVALID_NETWORK_CONFIG)
    listed = raw.get("cniVersions")
    if listed is None:
        return version
    if not isinstance(listed, list):
        raise ConfigError("error parsing configuration list: invalid type for cniVersions: "
                          f"{type(listed).__name__}", INVALID_NETWORK_CONFIG)
    candidates = []
    for i, entry in enumerate(listed):
        if not isinstance(entry, str) or not versions.valid(entry):
            raise ConfigError(f"error parsing configuration list: invalid cniVersions entry {entry!r} "
                              f"at index {i}", INVALID_NETWORK_CONFIG)
        if not versions.greater(entry, versions.CURRENT):
            candidates.append(entry)
    if version and versions.valid(version) and not versions.greater(version, versions.CURRENT):
        candidates.append(version)
    return max(candidates, key=versions.key) if candidates else version


def plugin_from_dict(raw: Any, where: str = "configuration") -> NetworkConfig:
    """Check the fields libcni decodes into a typed NetConf; keep everything else untouched."""
    if not isinstance(raw, dict):
        raise ConfigError(f"error parsing {where}: not a JSON object", INVALID_NETWORK_CONFIG)
    for key in ("type", "name", "cniVersion"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"error parsing {where}: {key!r} must be a string", INVALID_NETWORK_CONFIG)
    if not raw.get("type"):
        raise ConfigError(f"error parsing {where}: missing 'type'", INVALID_NETWORK_CONFIG)
    if "/" in raw["type"]:
        raise ConfigError(f"error parsing {where}: invalid plugin type {raw['type']!r}", INVALID_NETWORK_CONFIG)
    caps = raw.get("capabilities", {})
    if caps is not None and (not isinstance(caps, dict) or
                             not all(isinstance(v, bool) for v in caps.values())):
        raise ConfigError(f"error parsing {where}: 'capabilities' must map names to true/false",
                          INVALID_NETWORK_CONFIG)
    return NetworkConfig(raw)


def _decode(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"error parsing {what}: {exc}", INVALID_NETWORK_CONFIG) from None


def conf_list_from_bytes(data: bytes, *, source: str = "", plugin_dir: str | None = None) -> NetworkConfigList:
    """Parse a `.conflist` document. `plugin_dir`: where `<name>/*.conf` plugin files may live."""
    raw = _decode(data, "configuration list")
    if not isinstance(raw, dict):
        raise ConfigError("error parsing configuration list: not a JSON object", INVALID_NETWORK_CONFIG)
    name = raw.get("name")
    if name is None:
        raise ConfigError("error parsing configuration list: no name", INVALID_NETWORK_CONFIG)
    if not isinstance(name, str):
        raise ConfigError(f"error parsing configuration list: invalid name type {type(name).__name__}",
                          INVALID_NETWORK_CONFIG)
    check_network_name(name)
    version = _negotiate(raw)
    disable_check = _bool_field(raw, "disableCheck")
    disable_gc = _bool_field(raw, "disableGC")
    only_inlined = _bool_field(raw, "loadOnlyInlinedPlugins")
    plugins_raw = raw.get("plugins")
    plugins: list[NetworkConfig] = []
    if plugins_raw is not None:
        if not isinstance(plugins_raw, list):
            raise ConfigError("error parsing configuration list: invalid 'plugins' type "
                              f"{type(plugins_raw).__name__}", INVALID_NETWORK_CONFIG)
        plugins = [plugin_from_dict(p, f"plugin config {i}") for i, p in enumerate(plugins_raw)]
    if plugin_dir and not only_inlined:
        plugins += _plugins_from_dir(os.path.join(plugin_dir, name))
    if not plugins:
        raise ConfigError(f"error parsing configuration list: no plugins in list{f' ({source})' if source else ''}",
                          INVALID_NETWORK_CONFIG)
    return NetworkConfigList(name=name, cni_version=version, plugins=plugins, raw=data,
                             disable_check=disable_check, disable_gc=disable_gc, source=source)


def _plugins_from_dir(path: str) -> list[NetworkConfig]:
    out = []
    for file in conf_files(path, (".conf",)):
        with open(file, "rb") as f:
            out.append(plugin_from_dict(_decode(f.read(), file), file))
    return out


def conf_list_from_conf(conf: dict[str, Any], *, source: str = "") -> NetworkConfigList:
    """Up-convert a legacy single-plugin config into a one-plugin list (libcni ConfListFromConf)."""
    plugin = plugin_from_dict(conf)
    name = conf.get("name", "")
    check_network_name(name)
    doc = {"cniVersion": conf.get("cniVersion", ""), "name": name, "plugins": [conf]}
    return NetworkConfigList(name=name, cni_version=conf.get("cniVersion", ""), plugins=[plugin],
                             raw=to_wire(doc), source=source)


def conf_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    """Regular files in `directory` with one of `extensions`, sorted by name; no folder = none."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(f"{directory} is not a directory", INVALID_NETWORK_CONFIG) from None
    return [os.path.join(directory, n) for n in names
            if os.path.splitext(n)[1] in extensions and os.path.isfile(os.path.join(directory, n))]


def load_conf_list(directory: str, name: str) -> NetworkConfigList:
    """The network named `name` in `directory`: conflists first, then legacy single configs."""
    lists = conf_files(directory, (".conflist",))
    for path in lists:
        with open(path, "rb") as f:
            data = f.read()
        conf = conf_list_from_bytes(data, source=path, plugin_dir=directory)
        if conf.name == name:
            return conf
    singles = conf_files(directory, (".conf", ".json"))
    if not singles and not lists:
        raise NotFoundError(f"no net configurations found in {directory}", INVALID_NETWORK_CONFIG)
    for path in singles:
        with open(path, "rb") as f:
            raw = _decode(f.read(), path)
        if isinstance(raw, dict) and raw.get("name") == name:
            return conf_list_from_conf(raw, source=path)
    raise NotFoundError(f'no net configuration with name "{name}" in {directory}', INVALID_NETWORK_CONFIG)


def check_network_name(name: str) -> None:
    if not name:
        raise ConfigError("missing network name", INVALID_NETWORK_CONFIG)
    if not NAME_RE.match(name):
        raise ConfigError("invalid characters found in network name", INVALID_NETWORK_CONFIG, name)


def to_wire(obj: Any, sort_keys: bool = True) -> bytes:
    """JSON as Go's json.Marshal of a map writes it: compact, keys sorted, HTML characters escaped.

    `sort_keys=False` keeps the given order (Go structs marshal in field order, not sorted)."""
    text = json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()

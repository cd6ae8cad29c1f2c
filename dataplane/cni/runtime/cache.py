"""The result cache in libcni's format and place: `<cache_dir>/results/<net>-<containerID>-<ifname>`.

A file holds `{"kind":"cniCacheV1","containerId","config"(base64 list bytes),"ifName","networkName",
"netns","cniArgs","capabilityArgs","result"}`, written like Go's json.Marshal, so podman, containerd
or cnitool can read what we write and the other way round. Writes are atomic (rename), because a
half-written cache file is a known source of stuck DELs (cni#1055).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from dataplane.cni.runtime.conf import to_wire
from dataplane.cni.runtime.errors import DECODING_FAILURE, RuntimeClientError

DEFAULT_CACHE_DIR = "/var/lib/cni"
KIND = "cniCacheV1"


@dataclass
class CachedAttachment:
    container_id: str
    network: str
    ifname: str
    config: bytes
    netns: str = ""
    cni_args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None


@dataclass
class ResultCache:
    cache_dir: str = DEFAULT_CACHE_DIR

    @property
    def results_dir(self) -> str:
        return os.path.join(self.cache_dir, "results")

    def path(self, network: str, container_id: str, ifname: str) -> str:
        if not network or not container_id or not ifname:
            raise RuntimeClientError(f"cache file path requires network name ({network!r}), container ID "
                                     f"({container_id!r}), and interface name ({ifname!r})")
        return os.path.join(self.results_dir, f"{network}-{container_id}-{ifname}")

    def store(self, entry: CachedAttachment) -> str:
        doc: dict[str, Any] = {
            "kind": KIND,
            "containerId": entry.container_id,
            "config": base64.b64encode(entry.config).decode(),
            "ifName": entry.ifname,
            "networkName": entry.network,
        }
        if entry.netns:
            doc["netns"] = entry.netns
        if entry.cni_args:
            doc["cniArgs"] = [list(kv) for kv in entry.cni_args]
        if entry.capability_args:
            # A Go map at the top (sorted keys); the values are the runtime's own types (podman's
            # port mappings are structs, marshalled in field order), so their order is kept.
            doc["capabilityArgs"] = dict(sorted(entry.capability_args.items()))
        if entry.result:
            doc["result"] = entry.result
        # Go marshals the struct in field order and the maps inside it with sorted keys.
        body = b"{" + b",".join(to_wire(k) + b":" + to_wire(v, sort_keys=(k != "capabilityArgs"))
                                for k, v in doc.items()) + b"}"
        target = self.path(entry.network, entry.container_id, entry.ifname)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target

    def load(self, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
        """The cached attachment, None when there is no file; RuntimeClientError when unreadable."""
        try:
            with open(self.path(network, container_id, ifname), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return _decode(data, network, container_id, ifname)

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self.path(network, container_id, ifname))
        except (FileNotFoundError, RuntimeClientError):
            pass

    def attachments(self, container_id: str = "") -> list[CachedAttachment]:
        """Every readable cniCacheV1 entry (optionally of one container), sorted by file name."""
        try:
            names = sorted(os.listdir(self.results_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith(".tmp-") or (container_id and f"-{container_id}-" not in name):
                continue
            try:
                with open(os.path.join(self.results_dir, name), "rb") as f:
                    raw = json.loads(f.read())
            except (OSError, ValueError):
                continue
            if not isinstance(raw, dict) or raw.get("kind") != KIND:
                continue
            if container_id and raw.get("containerId") != container_id:
                continue
            if not raw.get("ifName") or not raw.get("networkName"):
                continue
            try:
                found.append(_from_doc(raw))
            except (ValueError, TypeError):
                continue
        return found


def _from_doc(raw: dict[str, Any]) -> CachedAttachment:
    return CachedAttachment(
        container_id=raw.get("containerId", ""),
        network=raw.get("networkName", ""),
        ifname=raw.get("ifName", ""),
        config=base64.b64decode(raw.get("config") or ""),
        netns=raw.get("netns", ""),
        cni_args=[(k, v) for k, v in raw.get("cniArgs") or []],
        capability_args=raw.get("capabilityArgs") or {},
        result=raw.get("result"),
    )


def _decode(data: bytes, network: str, container_id: str, ifname: str) -> CachedAttachment:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise RuntimeClientError(f"failed to unmarshal cached network {network!r} config: {exc}",
                                 DECODING_FAILURE) from None
    if not isinstance(raw, dict):
        raise RuntimeClientError(f"failed to unmarshal cached network {network!r} config: not an object",
                                 DECODING_FAILURE)
    if raw.get("kind") != KIND:
        # A legacy cache file is the bare result.
        return CachedAttachment(container_id, network, ifname, b"", result=raw)
    try:
        return _from_doc(raw)
    except (ValueError, TypeError) as exc:
        raise RuntimeClientError(f"failed to unmarshal cached network {network!r} config: {exc}",
                                 DECODING_FAILURE) from None

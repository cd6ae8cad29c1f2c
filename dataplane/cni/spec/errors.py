"""CNI errors: the spec's well-known codes and the `{cniVersion, code, msg, details}` shape."""

from __future__ import annotations

import json

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
INVALID_NETNS = 8          # Go skel only: CNI_NETNS is the plugin's own namespace
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999             # Go skel wraps every plain plugin error in this code

SPEC_CODES = (1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 999)


class CNIError(Exception):
    """An error a plugin reports to its runtime; `code` is one of the spec's codes."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_dict(self, cni_version: str | None = None) -> dict[str, object]:
        out: dict[str, object] = {}
        if cni_version:
            out["cniVersion"] = cni_version
        out["code"] = self.code
        out["msg"] = self.msg
        if self.details:
            out["details"] = self.details
        return out

    def to_json(self, cni_version: str | None = None) -> bytes:
        """Indented like the Go skeleton's output (4 spaces, no trailing newline)."""
        return json.dumps(self.to_dict(cni_version), indent=4, ensure_ascii=False).encode()


class PluginError(CNIError):
    """A plain failure inside a plugin; reported as code 999 like the Go reference does."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(INTERNAL, msg, details)


def from_output(stdout: bytes, stderr: bytes = b"") -> CNIError:
    """Parse a delegate's error output (JSON on stdout, raw stderr as fallback), as libcni does."""
    try:
        obj = json.loads(stdout)
        if isinstance(obj, dict) and isinstance(obj.get("code"), int):
            return CNIError(obj["code"], str(obj.get("msg", "")), str(obj.get("details", "") or ""))
    except ValueError:
        pass
    text = (stdout or stderr).decode(errors="replace").strip()
    return PluginError(text or "plugin failed without output")

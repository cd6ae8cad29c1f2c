"""Errors the runtime side raises, shaped like libcni's so callers can match on them.

`PluginError` carries what a plugin printed (`{code, msg, details}`); `RuntimeClientError` is for
what the client itself rejects before exec'ing anything (bad config, bad names, missing plugin).
Both are `CNIRuntimeError`, whose `code` follows the spec's numbering when one applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

INCOMPATIBLE_VERSION = 1
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
INTERNAL = 999


class CNIRuntimeError(Exception):
    """Base of everything the runtime client raises; `str()` is the libcni-style message.

    Every subclass has an integer `code` (the spec's error code when one applies, else 999).
    """


@dataclass
class PluginError(CNIRuntimeError):
    """A plugin exited non-zero; fields as parsed from its stdout (or stderr), like libcni's pluginErr."""

    code: int
    msg: str
    details: str = ""

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_output(cls, returncode: int, stdout: bytes, stderr: bytes) -> "PluginError":
        """libcni's rule: JSON error from stdout; if stdout is empty, the raw stderr."""
        if not stdout:
            if not stderr:
                return cls(INTERNAL, f"netplugin failed with no error message: exit status {returncode}")
            return cls(INTERNAL, f"netplugin failed: {stderr.decode(errors='replace')!r}")
        try:
            obj = json.loads(stdout)
        except ValueError as exc:
            return cls(INTERNAL, f"netplugin failed but error parsing its diagnostic message "
                                 f"{stdout.decode(errors='replace')!r}: {exc}")
        if not isinstance(obj, dict):
            return cls(INTERNAL, f"netplugin failed but error parsing its diagnostic message "
                                 f"{stdout.decode(errors='replace')!r}: not a JSON object")
        code = obj.get("code")
        return cls(code if isinstance(code, int) else 0, str(obj.get("msg", "")),
                   str(obj.get("details", "") or ""))


@dataclass
class RuntimeClientError(CNIRuntimeError):
    """Rejected by the client before (or instead of) running a plugin."""

    msg: str
    code: int = INTERNAL
    details: str = ""

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class ConfigError(RuntimeClientError):
    """A network configuration that cannot be loaded or parsed."""


class NotFoundError(ConfigError):
    """No configuration of that network name in the config folder (libcni's NotFoundError)."""


@dataclass
class ChainError(CNIRuntimeError):
    """One plugin of a list failed: says which and in what operation, like libcni does."""

    plugin_type: str
    network: str
    operation: str  # "add", "delete", "check", "gc", "status"
    cause: CNIRuntimeError

    @property
    def code(self) -> int:  # type: ignore[override]
        return getattr(self.cause, "code", INTERNAL)

    def __str__(self) -> str:
        return f'plugin type="{self.plugin_type}" name="{self.network}" failed ({self.operation}): {self.cause}'

"""Reading a YAML document with its line numbers, so every error can name file and line.

PyYAML's *composed* nodes (not the constructed Python objects) keep `start_mark`; `Field` wraps
one node and offers typed, strict accessors. Nothing here knows about scenarios: spec.py says
which fields exist.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import yaml


class SpecError(ValueError):
    """An invalid scenario file: the message starts with `file:line:`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}")


@dataclass(frozen=True)
class Field:
    """One YAML node, where it came from (file, 1-based line) and its dotted path."""

    node: yaml.Node
    file: str
    path: str

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, message: str) -> SpecError:
        return SpecError(self.file, self.line, f"{self.path}: {message}" if self.path else message)

    # -- shape -----------------------------------------------------------------------------------
    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == "tag:yaml.org,2002:null"

    def mapping(self, allowed: set[str] | frozenset[str] | None = None) -> dict[str, "Field"]:
        """The mapping's fields; with `allowed`, any other key is an error on the key's line."""
        if self.is_null():
            return {}
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"expected a mapping, got {self._kind()}")
        out: dict[str, Field] = {}
        for key_node, value_node in self.node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(self.file, key_node.start_mark.line + 1, f"{self.path}: keys must be strings")
            key = key_node.value
            where = f"{self.path}.{key}" if self.path else key
            if allowed is not None and key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise SpecError(self.file, key_node.start_mark.line + 1,
                                f"unknown field {where!r} (allowed here: {hint})")
            if key in out:
                raise SpecError(self.file, key_node.start_mark.line + 1, f"duplicate field {where!r}")
            out[key] = Field(value_node, self.file, where)
        return out

    def items(self) -> list["Field"]:
        if self.is_null():
            return []
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"expected a list, got {self._kind()}")
        return [Field(n, self.file, f"{self.path}[{i}]") for i, n in enumerate(self.node.value)]

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        return f"{self.node.value!r}"

    def _scalar(self) -> yaml.ScalarNode:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error(f"expected a single value, got {self._kind()}")
        return self.node

    # -- scalars ---------------------------------------------------------------------------------
    def str(self) -> str:
        node = self._scalar()
        if self.is_null():
            raise self.error("a value is required")
        return node.value

    def int(self, lo: int | None = None, hi: int | None = None) -> int:
        node = self._scalar()
        if node.tag != "tag:yaml.org,2002:int":
            raise self.error(f"expected an integer, got {node.value!r}")
        value = int(node.value, 0)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(f"{value} is out of range [{lo}, {hi}]")
        return value

    def float(self, lo: float | None = None, hi: float | None = None) -> float:
        node = self._scalar()
        if node.tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            raise self.error(f"expected a number, got {node.value!r}")
        value = float(node.value)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(f"{value} is out of range [{lo}, {hi}]")
        return value

    def bool(self) -> bool:
        node = self._scalar()
        if node.tag != "tag:yaml.org,2002:bool":
            raise self.error(f"expected true or false, got {node.value!r}")
        return node.value.lower() in ("true", "yes", "on")

    def choice(self, options: tuple[str, ...]) -> str:
        value = self.str()
        if value not in options:
            raise self.error(f"{value!r} is not one of {', '.join(options)}")
        return value

    def ip(self) -> str:
        value = self.str()
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise self.error(f"{value!r} is not an IPv4 address") from None

    def cidr(self) -> str:
        value = self.str()
        try:
            return str(ipaddress.IPv4Network(value, strict=True))
        except ValueError as exc:
            raise self.error(f"{value!r} is not an IPv4 network: {exc}") from None

    def str_map(self) -> dict[str, str]:
        return {k: v.str() for k, v in self.mapping().items()}

    def plain(self) -> object:
        """The constructed Python value (for opaque blobs such as a CNI conflist)."""
        return yaml.SafeLoader(yaml.serialize(self.node)).get_single_data()


def documents(text: str, file: str) -> Iterator[Field]:
    """Each YAML document of `text` as a Field; syntax errors become SpecErrors with the line."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise SpecError(file, line, f"YAML syntax error: {exc.problem or exc}") from None
    for node in nodes:
        if node is not None:
            yield Field(node, file, "")

"""Fixtures for the CNI plugin tests: our plugin directory and scratch "host" nodes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from cni_plugin_helpers import Node
from dataplane.cni import testing as cni_testing


@pytest.fixture(scope="session")
def our_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CNI_PATH holding executables for our plugins."""
    return cni_testing.install_wrappers(str(tmp_path_factory.mktemp("cni-bin")))


@pytest.fixture
def node(sandbox: Any, tmp_path: Any) -> Node:
    data_dir = str(tmp_path / "data")
    os.makedirs(data_dir)
    return Node(sandbox.netns("h"), data_dir, sandbox)


@pytest.fixture
def make_node(sandbox: Any, tmp_path: Any) -> Callable[[str], Node]:
    """Several independent nodes in one test (e.g. one for Go, one for ours)."""
    def make(label: str) -> Node:
        data_dir = str(tmp_path / f"data-{label}")
        os.makedirs(data_dir)
        return Node(sandbox.netns("h"), data_dir, sandbox)
    return make

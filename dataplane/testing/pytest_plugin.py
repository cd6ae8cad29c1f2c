"""pytest plugin: the `sandbox` and `netns` fixtures, `requires` marker, and the leak check.

Registered through the `pytest11` entry point, so it is active in every pytest session run from
the project's environment (sub-runs made with pytester included).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dataplane.testing import leakcheck
from dataplane.testing.requirements import missing
from dataplane.testing.sandbox import Netns, Sandbox

_BEFORE = pytest.StashKey[leakcheck.Snapshot]()
_LEAKS = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dataplane")
    group.addoption("--no-leak-check", action="store_true",
                    help="do not fail the session for namespaces, links, rules, files or processes left behind")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*features): skip unless every feature is available "
                            "(root, netns, veth, bridge, vxlan, tun, nft, iptables-legacy, ...)")


def _leak_check_enabled(config: pytest.Config) -> bool:
    return os.geteuid() == 0 and not config.getoption("--no-leak-check")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _leak_check_enabled(session.config):
        leakcheck.become_subreaper()
        session.config.stash[_BEFORE] = leakcheck.Snapshot.take()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    found = leakcheck.leaks(before, leakcheck.Snapshot.take())
    session.config.stash[_LEAKS] = found
    if found and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    found = config.stash.get(_LEAKS, [])
    if found:
        terminalreporter.section("leak check", sep="=", red=True, bold=True)
        terminalreporter.line(f"LEAK CHECK FAILED: {len(found)} thing(s) created by this run are still here:",
                              red=True)
        for line in found:
            terminalreporter.line(f"  {line}")
        # Shows up in pytest's closing line, e.g. "12 passed, 1 leaked".
        report = pytest.CollectReport("leak-check", "failed", "\n".join(found), [])
        terminalreporter.stats.setdefault("leaked", []).append(report)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers(name="requires"):
        for feature in mark.args:
            reason = missing(feature)
            if reason:
                pytest.skip(f"missing {feature}: {reason}")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Namespaces, links and processes made through it are removed after the test, pass or fail."""
    from dataplane.testing.requirements import require

    require("root", "netns")
    box = Sandbox()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def netns(sandbox: Sandbox) -> Netns:
    """One fresh, uniquely named network namespace with lo up."""
    return sandbox.netns()

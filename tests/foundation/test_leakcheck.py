"""The session-end leak check fails a run that leaves something behind, and names it."""

import os
import secrets
import signal
import textwrap

import pytest

from dataplane.netns import namespace
from dataplane.testing import unique_name


@pytest.mark.requires("root", "netns")
def test_leaked_namespace_fails_the_run_and_is_named(pytester):
    leaked = unique_name("dpleak")
    pytester.makepyfile(textwrap.dedent(f"""
        from dataplane.netns import namespace

        def test_leaks_a_namespace():
            namespace.create({leaked!r})
    """))
    try:
        result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    finally:
        namespace.remove(leaked)
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*LEAK CHECK FAILED*", f"*network namespace {leaked}*"])
    result.stdout.fnmatch_lines(["*1 passed*1 leaked*"])


@pytest.mark.requires("root", "netns")
def test_leaked_process_fails_the_run_and_is_named(pytester):
    marker = f"31.{secrets.randbelow(10**6):06d}"  # a sleep duration nothing else uses
    pytester.makepyfile(textwrap.dedent(f"""
        import subprocess

        def test_leaks_a_daemon():
            # double fork: the daemon is re-parented, yet still found (pytest is a subreaper)
            subprocess.run(["sh", "-c", "(sleep {marker} &)"], check=True)
    """))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*LEAK CHECK FAILED*", f"*process *sleep {marker}*"])
    # the leaked daemon is ours to stop: find it by the PID the report names
    for line in result.stdout.lines:
        if f"sleep {marker}" in line and "process" in line:
            os.kill(int(line.split("process ")[1].split(":")[0]), signal.SIGKILL)


@pytest.mark.requires("root", "netns")
def test_clean_run_passes_even_when_a_test_fails_inside_the_sandbox(pytester):
    pytester.makepyfile("""
        def test_fails_after_creating_things(sandbox):
            ns = sandbox.netns()
            sandbox.veth(ns, None)
            assert False, "deliberate"
    """)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "LEAK CHECK FAILED" not in result.stdout.str()

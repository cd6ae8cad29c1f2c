"""Fixtures shared by the tests, the scenarios and the benchmarks.

`Sandbox` creates uniquely named namespaces, veth pairs, bridges and processes and removes
exactly those; `requirements` says why a test cannot run here; `leakcheck` finds what a run
left behind. The pytest plugin (`pytest_plugin`) is registered through an entry point, so every
pytest session in the project's environment gets the fixtures and the leak check.
"""

from dataplane.testing.requirements import missing, require
from dataplane.testing.sandbox import Sandbox, unique_name

__all__ = ["Sandbox", "missing", "require", "unique_name"]

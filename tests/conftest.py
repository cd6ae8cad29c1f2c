"""The fixtures (`sandbox`, `netns`) and the leak check come from dataplane.testing.pytest_plugin,
registered as a pytest11 entry point by the package."""

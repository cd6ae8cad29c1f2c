import os
import subprocess
import sys

from click.testing import CliRunner

from dataplane import __version__
from dataplane.cli.main import main

BIN = os.path.join(os.path.dirname(sys.executable), "dataplane")


def test_console_script_help_lists_subsystems():
    res = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True)
    assert "packet-level emulator" in res.stdout
    assert "demo" in res.stdout


def test_console_script_version():
    res = subprocess.run([BIN, "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == f"dataplane, version {__version__}"


def test_unknown_subcommand_is_a_clean_usage_error():
    res = CliRunner().invoke(main, ["no-such-command"])
    assert res.exit_code == 2
    assert "No such command" in res.output
    assert "Traceback" not in res.output

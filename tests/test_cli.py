"""Tests of the ``facetrack`` command-line dispatcher."""

from __future__ import annotations

import subprocess
import sys

from facetrack import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    try:
        code = cli.main(["no-such-command"])
    except SystemExit as exc:  # argparse reports invalid choices by exiting
        code = exc.code
    assert code == 2


def test_console_script_help_runs_in_a_fresh_process():
    proc = subprocess.run(
        [sys.executable, "-m", "facetrack.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "caption" in proc.stdout and "benchmark" in proc.stdout


def test_every_registered_command_module_has_the_contract():
    import importlib

    for name, (module_name, _) in cli.COMMANDS.items():
        try:
            module = importlib.import_module(f"facetrack.commands.{module_name}")
        except ModuleNotFoundError as exc:
            assert exc.name == f"facetrack.commands.{module_name}", f"{name}: {exc}"
            continue
        assert callable(module.add_arguments) and callable(module.run), name
        assert module.__doc__, f"{name} has no description"

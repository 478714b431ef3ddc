"""The command line: help, version, and one-line errors with the right exit codes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from quanttool import __version__


def quanttool(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "quanttool", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_version():
    result = quanttool("--version")
    assert result.returncode == 0 and __version__ in result.stdout


@pytest.mark.parametrize("command, options", [
    ("calibrate", ["--model", "--images", "--shape", "--mean", "--norm", "--color", "--resize", "--pad-value",
                   "--focus", "--max-images", "--threads", "--algorithm", "--scheme", "--percentile", "--compat",
                   "--stats", "--output", "--bits", "--table-format", "--jobs", "--shard"]),
    ("merge-stats", ["--output"]),
    ("convert", ["--model", "--output", "--table", "--images", "--algorithm", "--format", "--exclude", "--params",
                 "--scheme"]),
    ("evaluate", ["--model", "--quantized", "--table", "--images", "--labels", "--json", "--report",
                  "--max-images"]),
    ("simulate", ["--model", "--params", "--images", "--rounding", "--json", "--max-images"]),
    ("convert", ["--check-images", "--check-floor", "--target-sqnr", "--max-fp32-ops", "--bounded"]),
    ("sensitivity", ["--model", "--images", "--table", "--algorithm", "--bounded", "--exclude", "--measure-images",
                     "--json", "--report", "--top"]),
])
def test_help_documents_every_option(command, options):
    result = quanttool(command, "--help")
    assert result.returncode == 0
    for option in options:
        assert option in result.stdout, option


@pytest.mark.parametrize("args, needle", [
    (["calibrate", "-m", "x.onnx", "--bogus"], "--bogus"),
    (["calibrate", "-m", "x.onnx", "-a", "magic"], "magic"),
    (["calibrate", "-m", "x.onnx", "--bits", "9"], "--bits"),
    (["convert", "-m", "x.onnx", "-o", "y.onnx"], "-f TABLE.scale"),
    (["evaluate", "-m", "x.onnx", "-i", "d"], "-q"),
    (["simulate", "-m", "x.onnx", "--params", "p.json"], "-i DIR"),
    (["calibrate", "-m", "x.onnx", "--table-format", "caffe"], "caffe"),
    (["frobnicate"], "frobnicate"),
    (["sensitivity", "-m", "x.onnx"], "-i DIR"),
    (["calibrate", "-m", "x.onnx", "--bounded", "maybe"], "--bounded"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    result = quanttool(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_algorithm_choices_match_the_algorithms():
    # cli.py spells the names out so `--help` does not import numpy; they must be the algorithms' own
    from quanttool import algorithms, cli

    assert cli.ALGORITHM_CHOICES == [*algorithms.ALGORITHMS, *algorithms.ALIASES]


def test_help_imports_neither_numpy_nor_onnx():
    code = ("import sys; from quanttool import cli\ntry: cli.cli.main(['--help'], standalone_mode=False)\n"
            "except SystemExit: pass\nprint(sorted(m for m in ('numpy', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


INTERRUPT_WHILE_IMPORTING = """
import sys

class Interrupt:  # a Ctrl-C that lands while the CLI's modules load, as in the first fraction of a second
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["quanttool", "--version"]
"""


def _console_script_entry():
    """`module:function` of the installed `quanttool` command, as pyproject.toml declares it."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    return re.search(r'^quanttool = "([\w.]+):(\w+)"', text, re.M).groups()


@pytest.mark.parametrize("launch", [
    "import runpy; runpy.run_module('quanttool', run_name='__main__', alter_sys=True)",  # python -m quanttool
    "import importlib; module, function = {entry!r}; getattr(importlib.import_module(module), function)()",
])
def test_ctrl_c_while_loading_is_one_line_exit_130(launch):
    code = INTERRUPT_WHILE_IMPORTING + launch.format(entry=_console_script_entry())
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 130, result.stderr
    assert result.stderr.split() == ["quanttool:", "interrupted"] and result.stdout == ""


def test_ctrl_c_during_a_command_is_one_line_exit_130(monkeypatch, capsys):
    from quanttool import commands
    from quanttool.cli import main

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "Inputs", interrupt)
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "-m", "x.onnx", "-i", "d"])
    err = capsys.readouterr().err
    assert exc.value.code == 130 and err.split() == ["quanttool:", "interrupted"]


def test_no_telemetry_from_onnxruntime(tmp_path):
    """onnxruntime 1.32's Linux wheel writes a device id and queues telemetry events under
    ~/.cache/Microsoft/DeveloperTools unless ORT_DISABLE_TELEMETRY is set; a quanttool command leaves nothing
    there (plain onnxruntime in the same HOME is run too, so the test shows whether this version records)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    model = Path(__file__).resolve().parent.parent / "demo" / "digits_mobilenet.onnx"
    images = Path(__file__).resolve().parent.parent / "calibration_data" / "digit_0"
    ours, plain = tmp_path / "ours", tmp_path / "plain"
    result = subprocess.run([sys.executable, "-m", "quanttool", "calibrate", "-m", model, "-i", images, "--color",
                             "gray", "--max-images", "2", "-o", tmp_path / "t.scale"],
                            env={**env, "HOME": str(ours)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.scale").exists() and not (ours / ".cache" / "Microsoft").exists()
    subprocess.run([sys.executable, "-c", f"import onnxruntime as o; o.InferenceSession({str(model)!r})"],
                   env={**env, "HOME": str(plain)}, check=True)
    print("plain onnxruntime records telemetry here:", (plain / ".cache" / "Microsoft").exists())

"""Command-line errors: one line ``tttgraph <command>: error: <message>`` on stderr, exit 2 for bad usage
and 1 for a failed command, a traceback only with ``--debug``; each case fails before any heavy work."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")

from tttgraph.cli import main  # noqa: E402
from tttgraph.command import error_message, one_line  # noqa: E402


def _one_error_line(capsys, command: str) -> str:
    """The single stderr line of a failed ``tttgraph <command>`` (asserted to be exactly one line)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0][len(f"{command}: error: "):]


USAGE = {  # one bad flag per command: argparse refuses it before anything is imported or built
    "demo": (["--frames", "x"], "argument --frames: expected an integer, got 'x'"),
    "finetune": (["--max-steps", "0"], "argument --max-steps: must be >= 1, got 0"),
    "inspect": (["--family", "sora"], "argument --family: invalid choice: 'sora'"),
    "transform": (["--overlap", "-1"], "argument --overlap: must be >= 0, got -1"),
    "export": (["--format", "zip"], "argument --format: invalid choice: 'zip'"),
    "generate": (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
}


@pytest.mark.parametrize("command", sorted(USAGE))
def test_usage_errors_are_one_line_with_exit_status_2(command, capsys):
    flags, expected = USAGE[command]
    assert main([command, *flags]) == 2
    message = _one_error_line(capsys, f"tttgraph {command}")
    assert message.startswith(expected), message
    assert message.endswith(f"see tttgraph {command} --help")


def test_an_unknown_command_is_a_usage_error(capsys):
    assert main(["sample"]) == 2
    assert "argument COMMAND: invalid choice: 'sample'" in _one_error_line(capsys, "tttgraph")


def test_demo_runtime_error(capsys):
    # The Hopper kernel needs CUDA tensors; the demo's tiny model runs on the CPU on every machine.
    assert main(["demo", "--backend", "cuda_sm90"]) == 1
    message = _one_error_line(capsys, "tttgraph demo")
    assert "backend='cuda_sm90' can't run this layer here" in message and "not a CUDA device" in message


def test_finetune_runtime_error(tmp_path, capsys):
    assert main(["finetune", "--out", str(tmp_path / "run"), "--resume"]) == 1
    message = _one_error_line(capsys, "tttgraph finetune")
    assert message == f"--resume: {tmp_path / 'run' / 'checkpoints'} holds no checkpoint; start without --resume"


def test_inspect_runtime_error_names_the_missing_file(tmp_path, capsys):
    missing = tmp_path / "cfg.json"
    assert main(["inspect", "--config", str(missing)]) == 1
    message = _one_error_line(capsys, "tttgraph inspect")
    assert str(missing) in message and "does not exist" in message


def test_transform_runtime_error(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"mini_batch": 16}))
    assert main(["transform", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "o")]) == 1
    message = _one_error_line(capsys, "tttgraph transform")
    assert "unknown TTTConfig key(s) ['mini_batch']" in message and "mini_batch_size" in message
    assert not (tmp_path / "o").exists()


def test_export_errors_name_the_flags_not_the_python_keywords(tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.txt"
    assert main(["export", "--out", str(out)]) == 1
    message = _one_error_line(capsys, "tttgraph export")
    assert message.startswith(f"--out {out}: .txt names no export format") and "--format" in message
    assert "format=" not in message

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # TensorRT absent, on any machine
    assert main(["export", "--out", str(tmp_path / "m.engine")]) == 1
    message = _one_error_line(capsys, "tttgraph export")
    assert message.startswith(f"--out {tmp_path / 'm.engine'}: exporting a TensorRT engine needs the 'tensorrt'")
    assert "pip install 'tttgraph[tensorrt]'" in message and "format=" not in message

    pytest.importorskip("onnxscript")
    assert main(["export", "--out", str(tmp_path / "m.onnx"), "--opset", "99"]) == 1
    message = _one_error_line(capsys, "tttgraph export")
    assert message.startswith("--opset 99 is not supported: pass --opset between 18 and") and "opset=" not in message
    assert not any(tmp_path.iterdir())  # refused before anything was built or written


def test_generate_runtime_error(tmp_path, capsys):
    assert main(["generate", "--storyboard", str(tmp_path / "story.toml"), "--dry-run"]) == 1
    assert str(tmp_path / "story.toml") in _one_error_line(capsys, "tttgraph generate")
    assert main(["generate", "--out", str(tmp_path / "v.avi"), "--dry-run"]) == 1
    assert "give a path ending in .mp4" in _one_error_line(capsys, "tttgraph generate")


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    from tttgraph.exporter import ExportError

    for argv in (["--debug", "export", "--out", str(tmp_path / "m.txt")],
                 ["export", "--out", str(tmp_path / "m.txt"), "--debug"]):
        with pytest.raises(ExportError, match="names no export format"):
            main(argv)


def test_export_help_names_the_default_output(capsys):
    assert main(["export", "--help"]) == 0
    assert "default ./tttgraph-model.onnx" in " ".join(capsys.readouterr().out.split())


def test_the_installed_command_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tttgraph", "export", "--out", str(tmp_path / "m.txt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"tttgraph export: error: --out {tmp_path / 'm.txt'}: .txt names no export format; end the file name in "
        ".pt2, .onnx, .engine, .plan, or pass --format {pt2,onnx,tensorrt}"
    ]


def test_error_messages_are_one_line_and_say_how_to_fix():
    assert one_line("no checkpoint is intact:\n  a: bad\n  b: bad\nstart again") == \
        "no checkpoint is intact: a: bad; b: bad; start again"
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "runs/x/story.toml")
    assert error_message(missing) == "runs/x/story.toml: No such file or directory"
    no_onnx = ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
    assert error_message(no_onnx).endswith("pip install 'tttgraph[onnx]'")
    assert error_message(RuntimeError("boom")) == \
        "RuntimeError: boom (an internal error: rerun with --debug for the traceback and report it)"

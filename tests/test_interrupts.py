"""SIGINT / SIGTERM handling: tttgraph.interrupts and the command line's one-line interrupt message."""

from __future__ import annotations

import argparse
import os
import signal
import time

import pytest

from tttgraph import interrupts
from tttgraph.command import run_parsed


def _deliver(signum: int) -> None:
    """Send ``signum`` to this process and give Python the moment it needs to run the handler."""
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_raising_turns_either_signal_into_interrupted_and_restores_the_handlers(signum):
    before = signal.getsignal(signum)
    with pytest.raises(interrupts.Interrupted) as caught, interrupts.raising():
        _deliver(signum)
    assert caught.value.signum == signum and isinstance(caught.value, KeyboardInterrupt)
    assert interrupts.exit_status(signum) == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert signal.getsignal(signum) is before


def test_deferred_records_the_first_signal_and_raises_on_the_second():
    with interrupts.deferred() as stop:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs; nothing is raised
        assert stop.signum == signal.SIGTERM
        with pytest.raises(interrupts.Interrupted) as caught:
            _deliver(signal.SIGINT)
    assert caught.value.signum == signal.SIGINT


def _args(run, interrupted=None, **extra) -> argparse.Namespace:
    return argparse.Namespace(run=run, interrupted=interrupted, debug=False, **extra)


def _interrupt(signum):
    def run(_args):
        raise interrupts.Interrupted(signum)

    return run


def test_an_interrupted_command_prints_one_line_and_exits_128_plus_the_signal(capsys):
    said = lambda args, command: f"saved X; continue with: {' '.join(command)}"  # noqa: E731
    assert run_parsed(_args(_interrupt(signal.SIGTERM), said), prog="tttgraph demo",
                      command=["tttgraph", "demo"]) == 143
    assert capsys.readouterr().err.splitlines() == [
        "tttgraph demo: interrupted by SIGTERM; saved X; continue with: tttgraph demo"]

    def ctrl_c(_args):
        raise KeyboardInterrupt  # Python's own SIGINT handler, as in a thread or before ours is installed

    assert run_parsed(_args(ctrl_c), prog="tttgraph export", command=["tttgraph", "export"]) == 130
    assert capsys.readouterr().err.splitlines() == ["tttgraph export: interrupted by SIGINT; nothing was saved"]


def test_finetune_says_which_checkpoint_and_adds_resume(tmp_path):
    from tttgraph.finetune.cli import interrupted

    args = argparse.Namespace(out=str(tmp_path / "run"), resume=False, precompute_only=False)
    command = ["tttgraph", "finetune", "--out", args.out, "--max-steps", "40"]
    line = interrupted(args, command)
    assert line.startswith(f"no training checkpoint was written yet (finished data under {tmp_path / 'run' / 'data'}")
    assert line.endswith(f"start again with: tttgraph finetune --out {args.out} --max-steps 40")

    for step in (4, 8):  # complete checkpoints: a directory with trainer.json
        (tmp_path / "run" / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / f"step-{step:06d}" / "trainer.json").write_text("{}")
    (tmp_path / "run" / "checkpoints" / ".step-000009.tmp").mkdir()  # an unfinished one is never named
    assert interrupted(args, command) == (
        f"saved checkpoint {tmp_path / 'run' / 'checkpoints' / 'step-000008'} (step 8); continue with: "
        f"tttgraph finetune --out {args.out} --max-steps 40 --resume")
    args.resume = True
    assert interrupted(args, [*command, "--res"]).endswith("--max-steps 40 --res")  # not added twice


def test_generate_says_which_step_and_drops_no_resume(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tttgraph.generate.cli import interrupted

    out = tmp_path / "v.mp4"
    args = argparse.Namespace(out=str(out), checkpoint=None, checkpoint_every=5, steps=50)
    command = ["tttgraph", "generate", "--out", str(out), "--no-resume"]
    assert interrupted(args, command) == (
        "nothing was saved yet (the first latent checkpoint comes after step 5); start again with: "
        f"tttgraph generate --out {out}")
    save_file({"latents": torch.zeros(1)}, str(out.with_suffix(".resume.safetensors")), metadata={"step": "15"})
    assert interrupted(args, command) == (
        f"saved the latents of step 15/50 in {out.with_suffix('.resume.safetensors')}; continue with: "
        f"tttgraph generate --out {out}")
    args.checkpoint_every = 0
    assert interrupted(args, command).startswith("nothing was saved (--checkpoint-every 0)")

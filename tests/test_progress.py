"""Progress display: tqdm on a terminal, plain periodic lines (no carriage returns) anywhere else."""

from __future__ import annotations

import io

from tttgraph import progress
from tttgraph.progress import LineProgress, abandon, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_choice_follows_the_stream():
    from tqdm.auto import tqdm

    assert isinstance(progress_bar(total=3, file=io.StringIO()), LineProgress)
    bar = progress_bar(total=3, file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    assert not progress.is_terminal(object()) and progress.is_terminal(Terminal())


def test_plain_lines_at_tenths_with_postfix_and_a_last_line(monkeypatch):
    monkeypatch.setattr(progress, "LINE_GAP_S", 0.0)  # fast test steps: every tenth prints
    log = io.StringIO()
    bar = progress_bar(total=20, initial=0, desc="finetune", unit="step", file=log)
    for _ in range(20):
        bar.update(1)
        bar.set_postfix(loss="0.5000")
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 10  # one per 10%, the 100% one included; close adds none
    assert lines[0].startswith("finetune: 2/20 steps (10%), 0:00 elapsed, ") and lines[0].endswith(", loss=0.5000")
    assert lines[-1].startswith("finetune: 20/20 steps (100%)")


def test_a_short_task_leaves_one_line_and_a_slow_one_reports_on_time(monkeypatch):
    log = io.StringIO()
    for _tile in progress_bar(range(32), desc="VAE decode", unit="tile", file=log):
        pass
    assert len(log.getvalue().splitlines()) == 1
    assert log.getvalue().startswith("VAE decode: 32/32 tiles (100%)")

    log = io.StringIO()
    bar = LineProgress(total=1000, desc="denoising", unit="step", file=log, every_s=0.0)  # every update is "late"
    bar.update(3)
    assert log.getvalue().startswith("denoising: 3/1000 steps (0%)")


def test_transient_and_abandoned_bars_print_no_last_line():
    log = io.StringIO()
    bar = progress_bar(total=2, desc="capture", leave=False, file=log)
    bar.update(2)
    bar.close()
    assert log.getvalue() == ""  # a quick capture leaves no trace in a log

    bar = progress_bar(total=50, initial=5, desc="denoising", unit="step", file=log)
    bar.update(1)
    abandon(bar)  # an interrupt: the one-line message says where the run stopped
    bar.close()
    assert log.getvalue() == ""
    assert progress_bar(total=5, disable=True, file=log) is not None and log.getvalue() == ""

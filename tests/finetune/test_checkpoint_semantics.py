"""A training checkpoint whose TTT layers meant something else is refused on resume, with the reason."""

from __future__ import annotations

import json

import pytest

from tttgraph.errors import TTTGraphError
from tttgraph.finetune.checkpointing import FORMAT, VERSION, read_trainer_state
from tttgraph.layers import LAYER_SEMANTICS


def _write(directory, **extra):
    directory.mkdir()
    state = {"format": FORMAT, "version": VERSION, "step": 5, "world_size": 1, "scheduler": {}, **extra}
    (directory / "trainer.json").write_text(json.dumps(state))
    return directory


def test_current_semantics_loads(tmp_path):
    assert read_trainer_state(_write(tmp_path / "now", layer_semantics=LAYER_SEMANTICS))["step"] == 5


def test_checkpoint_from_before_the_paper_fidelity_change_is_refused(tmp_path):
    with pytest.raises(TTTGraphError, match="semantics 1, this tttgraph computes semantics 2.*reverse pass"):
        read_trainer_state(_write(tmp_path / "old"))

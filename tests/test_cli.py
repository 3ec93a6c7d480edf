"""`tttgraph inspect` and `tttgraph transform` work with no arguments beyond the defaults."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from tttgraph.cli import main  # noqa: E402


def test_inspect_prints_the_plan_of_a_named_family(capsys):
    assert main(["inspect", "--family", "wan2.1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "WanTransformer3DModel" in out and "blocks.0.attn1" in out and "cross-attention: not targeted" in out


def test_transform_runs_and_saves(tmp_path, capsys):
    assert main(["transform", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "forward ok" in out
    assert (tmp_path / "run" / "tttgraph_recipe.json").is_file()
    assert (tmp_path / "run" / "tttgraph_weights.safetensors").is_file()


def test_public_api_loads_lazily():
    import tttgraph

    assert callable(tttgraph.transform) and callable(tttgraph.restore)
    assert tttgraph.presets.cogvideox_5b_63s().segment_latent_frames == 12
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tttgraph.nope  # noqa: B018

"""save / restore: only new and changed tensors, a validated recipe, refusal of a different base."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("diffusers")

from tttgraph.checkpoint import RECIPE_FILE, WEIGHTS_FILE, RestoreError, restore, save  # noqa: E402
from tttgraph.config import TTTConfig  # noqa: E402
from tttgraph.models import build_tiny, example_inputs  # noqa: E402
from tttgraph.rewrite import plan_of, transform  # noqa: E402

CFG = TTTConfig(mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A transformed tiny CogVideoX after one optimizer step on everything, saved."""
    model = build_tiny("cogvideox", seed=0)
    inputs = example_inputs(model, 5, text_tokens=8)
    tm = transform(copy.deepcopy(model), CFG, inputs, progress=False).train()
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    tm(**inputs, return_dict=False)[0].square().mean().backward()
    opt.step()
    out = tmp_path_factory.mktemp("save")
    save(tm, out)
    return tm, inputs, out


def test_save_holds_new_and_changed_tensors_and_a_recipe(trained):
    tm, _, out = trained
    recipe = json.loads((out / RECIPE_FILE).read_text())
    from safetensors import safe_open

    with safe_open(out / WEIGHTS_FILE, framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(recipe["new_tensors"]) | set(recipe["changed_tensors"])
    assert all(".gated_ttt." in n for n in recipe["new_tensors"])
    assert recipe["changed_tensors"] and not any(".gated_ttt." in n for n in recipe["changed_tensors"])
    assert recipe["ttt_modules"] == plan_of(tm).ttt_modules
    assert TTTConfig.from_dict(recipe["config"]) == CFG
    assert set(recipe["checksums"]) == keys


def test_restore_onto_a_fresh_base_gives_identical_outputs(trained):
    tm, inputs, out = trained
    fresh = build_tiny("cogvideox", seed=0)
    restored = restore(fresh, out, progress=False)
    with torch.no_grad():
        assert torch.equal(restored(**inputs, return_dict=False)[0], tm(**inputs, return_dict=False)[0])


def test_restore_onto_a_different_base_fails_clearly(trained):
    _, _, out = trained
    with pytest.raises(RestoreError, match=r"not the one this save was made on; different values: .*\(\+\d+ more\)"):
        restore(build_tiny("cogvideox", seed=1), out, progress=False)
    with pytest.raises(RestoreError, match="the save was made on a CogVideoXTransformer3DModel"):
        restore(build_tiny("wan2.1"), out, progress=False)


def test_corrupted_saves_are_refused(trained, tmp_path):
    _, _, out = trained
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    recipe = json.loads((bad / RECIPE_FILE).read_text())
    name = recipe["new_tensors"][0]
    recipe["checksums"][name] = "0" * 64
    (bad / RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(RestoreError, match="fails its checksum"):
        restore(build_tiny("cogvideox", seed=0), bad, progress=False)
    (bad / RECIPE_FILE).write_text("{not json")
    with pytest.raises(RestoreError, match="not valid JSON"):
        restore(build_tiny("cogvideox", seed=0), bad, progress=False)
    with pytest.raises(RestoreError, match="is not a tttgraph save directory"):
        restore(build_tiny("cogvideox", seed=0), tmp_path / "nowhere", progress=False)


def test_config_json_round_trip_and_errors(tmp_path):
    from tttgraph import presets
    from tttgraph.config import ConfigError

    for seconds in presets.STAGE_SECONDS:
        cfg = getattr(presets, f"cogvideox_5b_{seconds}s")()
        assert TTTConfig.from_json(cfg.to_json()) == cfg
    assert presets.latent_frames(63) == 253
    cfg = TTTConfig(targets=["re:.*attn1"], exclude=["blocks.3.*"])
    cfg.save(tmp_path / "c.json")
    assert TTTConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match=r"unknown TTTConfig key\(s\) \['segment_frames'\]"):
        TTTConfig.from_dict({"segment_frames": 3})
    with pytest.raises(ConfigError, match="mini_batch_size must be an int >= 1, got 0"):
        TTTConfig(mini_batch_size=0)
    with pytest.raises(ConfigError, match="targets must be a list of patterns"):
        TTTConfig(targets="blocks.*")
    with pytest.raises(ConfigError, match="filter_fn can't be serialised"):
        TTTConfig(filter_fn=lambda path, module: True).to_json()
    with pytest.raises(ConfigError, match="config version 99 is not supported"):
        TTTConfig.from_dict({"version": 99})
    assert TTTConfig(targets=["blocks.*.attn1"]).selects("blocks.3.attn1")
    assert not TTTConfig(targets=["blocks.*.attn1"]).selects("blocks.3.sub.attn1")
    assert TTTConfig(targets=["blocks.**.attn1"]).selects("blocks.3.sub.attn1")


def test_fingerprint_of_a_tensor_larger_than_float32_index_precision():
    """A 37,748,736-element weight (CogVideoX-5B size) made the float32 sample index run past the end."""
    from tttgraph.fingerprints import tensor_fingerprint

    big = (torch.arange(37_748_736, dtype=torch.int64) % 251).to(torch.uint8)
    first = tensor_fingerprint(big)
    assert first == tensor_fingerprint(big.clone())
    big[-1] += 1  # the last element is sampled
    assert tensor_fingerprint(big) != first


@pytest.mark.parametrize("semantics", [None, 1, 99])
def test_a_save_of_other_layer_semantics_is_refused_with_the_reason(trained, tmp_path, semantics):
    """Saves from before the paper-fidelity change (no key: semantics 1) must not load as today's layers."""
    _, _, out = trained
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["layer_semantics"] == 2
    old = tmp_path / "old"
    old.mkdir()
    (old / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes())
    if semantics is None:
        del recipe["layer_semantics"]
    else:
        recipe["layer_semantics"] = semantics
    (old / RECIPE_FILE).write_text(json.dumps(recipe))
    reason = "mirrored positions in the reverse pass" if semantics in (None, 1) else "semantics 99 is unknown"
    with pytest.raises(RestoreError, match=rf"TTT layers of semantics {semantics or 1}.*{reason}"):
        restore(build_tiny("cogvideox", seed=0), old, progress=False)

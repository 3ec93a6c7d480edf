"""``save`` / ``restore``: the new and changed weights of a transformed model plus a recipe.

A save directory holds two files:

- ``tttgraph_weights.safetensors``: every parameter and buffer of the inserted TTT layers, and
  every pretrained tensor whose value changed since ``transform`` (fine-tuned attention, say);
- ``tttgraph_recipe.json``: the config, the model class and adapter, the rewritten sites, the
  example-input shapes the capture used, the library and torch versions, a SHA-256 of every saved
  tensor, and a fingerprint of every pretrained tensor of the base model.

``restore(base, dir)`` checks that ``base`` is the model the recipe was made on (same class, same
tensor names, shapes and fingerprints; the mismatches are listed otherwise), re-applies the
transform, verifies the checksums and loads the weights. Files are written atomically (temporary
file + rename, weights first, recipe last) and read with safetensors and validated JSON only:
nothing in a save directory is ever executed. The weights file also carries its recipe (and both
a ``save_id``), so a save killed between its two renames (new weights, old recipe) still reads
as the new save; a damaged file raises :class:`RestoreError` naming it and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tttgraph.config import ConfigError, TTTConfig, atomic_path, clear_stale, write_atomic
from tttgraph.errors import TTTGraphError
from tttgraph.fingerprints import state_dict_fingerprints, tensor_fingerprint
from tttgraph.input_specs import build_inputs, input_spec
from tttgraph.layers import LAYER_SEMANTICS, semantics_mismatch
from tttgraph.safe_read import check_fields, open_safetensors, read_json

__all__ = ["RECIPE_FILE", "WEIGHTS_FILE", "RestoreError", "restore", "save"]

RECIPE_FILE = "tttgraph_recipe.json"
WEIGHTS_FILE = "tttgraph_weights.safetensors"
RECIPE_FORMAT = "tttgraph-recipe"
RECIPE_VERSION = 1
_EMBEDDED_RECIPE = "tttgraph_recipe_json"  # weights-file metadata: the recipe written with these weights
_FIX = "write the directory again with tttgraph.save(model, directory)"


class RestoreError(TTTGraphError):
    """A save directory does not fit the base model, or is incomplete or corrupted."""


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------


def save(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the new and changed tensors of a transformed model and its recipe to ``directory``.

    Returns the directory. Other files in it are left alone.
    """
    from safetensors.torch import save_file

    from tttgraph.rewrite import example_inputs_of, plan_of

    plan = plan_of(model)
    example = example_inputs_of(model)
    state = model.state_dict()
    prefixes = tuple(path + "." for path in plan.ttt_modules)
    new = sorted(n for n in state if n.startswith(prefixes))
    changed = sorted(
        n for n, fp in plan.base_fingerprints.items()
        if n in state and fp is not None and tensor_fingerprint(state[n]) != fp
    )
    if any(state[n].device.type == "meta" for n in new + changed):
        raise TTTGraphError("the model has tensors on the meta device; load or initialise its weights before saving")
    tensors = {n: state[n].detach().cpu().contiguous() for n in new + changed}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, RECIPE_FILE):
        clear_stale(directory / name)  # left by a save that was killed while writing
    recipe = {
        "format": RECIPE_FORMAT,
        "version": RECIPE_VERSION,
        "layer_semantics": LAYER_SEMANTICS,
        "tttgraph_version": _version(),
        "torch_version": torch.__version__,
        "config": plan.config.to_dict(),
        "model_class": plan.model_class,
        "adapter": plan.adapter,
        "ttt_modules": plan.ttt_modules,
        "segmented_sites": [s.module_path or s.name for s in plan.sites if s.segment],
        "example_inputs": {k: input_spec(v) for k, v in example.items()},
        "new_tensors": new,
        "changed_tensors": changed,
        "checksums": {n: _sha256(t) for n, t in tensors.items()},
        "base_fingerprints": plan.base_fingerprints,
    }
    # One id for the pair: a reader that finds the weights' id differing from the recipe's knows the
    # save was killed between the two renames below and takes the recipe the weights carry.
    recipe["save_id"] = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]
    text = json.dumps(recipe, indent=1, sort_keys=True) + "\n"
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "tttgraph_recipe": RECIPE_FILE, _EMBEDDED_RECIPE: text})
    write_atomic(directory / RECIPE_FILE, text)
    return directory


def _version() -> str:
    import tttgraph

    return tttgraph.__version__


# ---------------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------------

_RECIPE_KEYS = {
    "format": str, "version": int, "tttgraph_version": str, "torch_version": str, "config": dict,
    "model_class": str, "adapter": str, "ttt_modules": list, "segmented_sites": list, "example_inputs": dict,
    "new_tensors": list, "changed_tensors": list, "checksums": dict, "base_fingerprints": dict,
}


def read_recipe(directory: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``tttgraph_recipe.json`` (JSON only; types of every key checked).

    When the weights file carries a recipe of another save (a save killed between writing the
    weights and the recipe), that newer recipe is the one returned.
    """
    path = Path(directory) / RECIPE_FILE
    if not path.exists():
        raise RestoreError(f"{path} does not exist: {directory} is not a tttgraph save directory (tttgraph.save)")
    recipe = _check_recipe(read_json(path, "tttgraph recipe", _FIX, error=RestoreError), path)
    weights = Path(directory) / WEIGHTS_FILE
    if weights.exists():
        with open_safetensors(weights, "tttgraph weights file", _FIX, error=RestoreError) as f:
            meta = f.metadata() or {}
        if _EMBEDDED_RECIPE in meta:
            try:
                embedded = json.loads(meta[_EMBEDDED_RECIPE])
            except json.JSONDecodeError as err:
                raise RestoreError(f"tttgraph weights file {weights} carries a damaged recipe ({err}); "
                                   f"{_FIX}") from None
            if not isinstance(embedded, dict) or embedded.get("save_id") != recipe.get("save_id"):
                recipe = _check_recipe(embedded, weights)
    return recipe


def _check_recipe(recipe: Any, path: Path) -> dict[str, Any]:
    """``recipe`` (read from ``path``) validated: format, the type of every key, versions."""
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise RestoreError(f"{path} is not a tttgraph recipe (format {RECIPE_FORMAT!r} expected); {_FIX}")
    check_fields(recipe, _RECIPE_KEYS, path, "tttgraph recipe", _FIX, error=RestoreError)
    if recipe["version"] > RECIPE_VERSION:
        raise RestoreError(
            f"{path} has recipe version {recipe['version']}, newer than this tttgraph reads ({RECIPE_VERSION}); "
            "upgrade tttgraph"
        )
    semantics = recipe.get("layer_semantics", 1)  # recipes written before the key existed are 1
    if not isinstance(semantics, int) or isinstance(semantics, bool):
        raise RestoreError(f"{path}: key 'layer_semantics' is not an int; the save is corrupted: {_FIX}")
    reason = semantics_mismatch(semantics, str(path))
    if reason:
        raise RestoreError(reason)
    return recipe


def restore(
    base_model: nn.Module, directory: str | os.PathLike, example_inputs: Any = None, *, progress: bool = True
) -> nn.Module:
    """Re-apply a saved transform to a fresh ``base_model`` and load the saved weights.

    ``example_inputs`` defaults to random inputs of the shapes recorded at save time. Raises
    :class:`RestoreError` listing every mismatch when ``base_model`` is not the saved model's base.
    """
    from tttgraph.rewrite import plan_of, transform

    recipe = read_recipe(directory)
    if type(base_model).__name__ != recipe["model_class"]:
        raise RestoreError(
            f"the save was made on a {recipe['model_class']}, the base model is a {type(base_model).__name__}"
        )
    _check_base(base_model, recipe)
    try:
        cfg = TTTConfig.from_dict(recipe["config"])
    except ConfigError as err:
        raise RestoreError(f"the recipe's config is invalid: {err}") from None
    if example_inputs is None:
        device = next(base_model.parameters()).device
        example_inputs = {k: build_inputs(v, device, error=RestoreError) for k, v in recipe["example_inputs"].items()}
    model = transform(base_model, cfg, example_inputs, progress=progress)
    if plan_of(model).ttt_modules != recipe["ttt_modules"]:
        raise RestoreError(
            f"re-applying the recipe gave TTT layers at {plan_of(model).ttt_modules}, the save has "
            f"{recipe['ttt_modules']}; the base model differs from the one saved"
        )
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.exists():
        raise RestoreError(f"{weights} is missing; the save is incomplete: {_FIX}")
    state = model.state_dict()
    expected = set(recipe["new_tensors"]) | set(recipe["changed_tensors"])
    missing_new = sorted(n for n in state if n.startswith(tuple(p + "." for p in recipe["ttt_modules"])) and
                         n not in expected)
    if missing_new:
        raise RestoreError(f"the save lacks TTT tensors {missing_new[:5]}{'...' if len(missing_new) > 5 else ''}")
    loaded = {}
    with open_safetensors(weights, "tttgraph weights file", _FIX, error=RestoreError) as f:
        keys = set(f.keys())
        if keys != expected:
            raise RestoreError(
                f"{weights} holds {len(keys)} tensors, the recipe lists {len(expected)}; missing "
                f"{sorted(expected - keys)[:5]}, unexpected {sorted(keys - expected)[:5]}: the save is corrupted; "
                f"{_FIX}"
            )
        for name in sorted(keys):
            t = f.get_tensor(name)
            if _sha256(t) != recipe["checksums"].get(name):
                raise RestoreError(f"tensor {name!r} in {weights} fails its checksum: the save is corrupted; {_FIX}")
            if name not in state or state[name].shape != t.shape:
                raise RestoreError(f"saved tensor {name!r} {tuple(t.shape)} does not fit the model")
            loaded[name] = t
    with torch.no_grad():
        for name, t in loaded.items():
            state[name].copy_(t)
    return model


def _check_base(model: nn.Module, recipe: dict[str, Any]) -> None:
    saved = recipe["base_fingerprints"]
    current = state_dict_fingerprints(model)
    missing = sorted(set(saved) - set(current))
    extra = sorted(set(current) - set(saved))
    differ = sorted(n for n in set(saved) & set(current)
                    if saved[n] is not None and current[n] is not None and saved[n] != current[n])
    if missing or extra or differ:
        def few(names):
            return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")

        parts = [f"{label}: {few(names)}" for label, names in
                 (("missing in the base", missing), ("not in the saved base", extra), ("different values", differ))
                 if names]
        raise RestoreError(
            "the base model is not the one this save was made on; " + "; ".join(parts)
            + ". Load the same pretrained checkpoint as at transform time"
        )

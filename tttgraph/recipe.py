"""The recipe :func:`tttgraph.transform` records in a diffusers model's config (``config["_tttgraph"]``).

Config keys starting with ``_`` are kept by diffusers and never passed to ``__init__``, so the
model's own ``save_pretrained`` (and a pipeline's) writes the recipe into ``config.json`` beside
the stock config; :mod:`tttgraph.pretrained` reads it back. JSON only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import tttgraph
from tttgraph.errors import TTTGraphError
from tttgraph.input_specs import input_spec
from tttgraph.layers import LAYER_SEMANTICS, semantics_mismatch
from tttgraph.safe_read import check_fields, read_json

__all__ = ["CONFIG_KEY", "PretrainedError", "read", "record"]

CONFIG_KEY = "_tttgraph"
FORMAT = "tttgraph-pretrained"
VERSION = 1
_KEYS = {"format": str, "version": int, "layer_semantics": int, "tttgraph_version": str, "config": dict,
         "model_class": str, "ttt_modules": list, "example_inputs": dict}
FIX = "save it again from the transformed model (model.save_pretrained(directory))"


class PretrainedError(TTTGraphError):
    """A ``save_pretrained`` directory can't be loaded as a transformed model."""


def record(model: nn.Module, plan: Any, example_inputs: dict[str, Any]) -> None:
    """Put the recipe of ``plan`` into ``model.config`` (diffusers models; others have no config to carry it)."""
    if not hasattr(model, "register_to_config"):
        return
    recipe = {
        "format": FORMAT, "version": VERSION, "layer_semantics": LAYER_SEMANTICS,
        "tttgraph_version": tttgraph.__version__, "config": plan.config.to_dict(), "model_class": plan.model_class,
        "ttt_modules": plan.ttt_modules, "example_inputs": {k: input_spec(v) for k, v in example_inputs.items()},
    }
    model.register_to_config(**{CONFIG_KEY: recipe})


def read(directory: Path) -> dict[str, Any]:
    """The validated recipe in ``directory/config.json``, plus the config's ``_class_name``."""
    path = directory / "config.json"
    config = read_json(path, "diffusers model config", FIX, error=PretrainedError)
    recipe = config.get(CONFIG_KEY)
    if recipe is None:
        raise PretrainedError(
            f"{path} has no {CONFIG_KEY!r} entry: {directory} was not saved from a model transformed by tttgraph. "
            "Load it with its diffusers class and call tttgraph.transform, or pass the transformed model's directory"
        )
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT:
        raise PretrainedError(f"{path}: {CONFIG_KEY!r} is not a tttgraph recipe; {FIX}")
    check_fields(recipe, _KEYS, path, "tttgraph recipe", FIX, error=PretrainedError)
    if recipe["version"] > VERSION:
        raise PretrainedError(f"{path}: recipe version {recipe['version']} is newer than this tttgraph reads "
                              f"({VERSION}); upgrade tttgraph")
    reason = semantics_mismatch(recipe["layer_semantics"], str(path))
    if reason:
        raise PretrainedError(reason)
    return {**recipe, "_class_name": config.get("_class_name")}

"""``save_pretrained`` of a transformed diffusers model, and :func:`from_pretrained` to load it back.

:func:`tttgraph.transform` records its recipe in the model's diffusers config under ``_tttgraph``
(config keys starting with ``_`` are kept by diffusers and never passed to ``__init__``), so the
model's own ``save_pretrained`` and a pipeline's ``save_pretrained`` write everything: the stock
config plus the recipe in ``config.json``, and every tensor, TTT layers included, in the usual
safetensors file(s). A stock ``from_pretrained`` of that directory gives the *original*
architecture (it ignores the TTT tensors); :func:`from_pretrained` gives the transformed model::

    model.save_pretrained("out/transformer")          # or pipe.save_pretrained("out")
    model = tttgraph.from_pretrained("out/transformer")
    pipe = CogVideoXPipeline.from_pretrained("out")
    pipe.transformer = tttgraph.from_pretrained("out", subfolder="transformer")
    # or, on a stock model already loaded from that directory:
    tttgraph.pretrained.reapply(pipe.transformer, "out/transformer")

Only JSON and safetensors are read; nothing in the directory is executed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tttgraph.input_specs import build_inputs
from tttgraph.recipe import FIX as _FIX
from tttgraph.recipe import PretrainedError
from tttgraph.recipe import read as _read_recipe
from tttgraph.safe_read import open_safetensors, read_json

__all__ = ["PretrainedError", "from_pretrained", "reapply"]


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a diffusers model directory (one file, or the shards of an index)."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        index = read_json(indexes[0], "safetensors index", _FIX, error=PretrainedError)
        shards = index.get("weight_map")
        if not isinstance(shards, dict):
            raise PretrainedError(f"{indexes[0]} has no 'weight_map'; {_FIX}")
        return [directory / name for name in sorted(set(shards.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise PretrainedError(f"{directory} holds no .safetensors weights; {_FIX} (safe_serialization=True)")
    return files


def reapply(model: nn.Module, directory: str | os.PathLike, *, progress: bool = False) -> nn.Module:
    """Transform a stock ``model`` loaded from ``directory`` again and load the saved TTT tensors into it."""
    from tttgraph.config import TTTConfig
    from tttgraph.rewrite import inputs_like_model, transform

    directory = Path(directory)
    recipe = _read_recipe(directory)
    if type(model).__name__ != recipe["model_class"]:
        raise PretrainedError(f"{directory} holds a transformed {recipe['model_class']}, the model is a "
                              f"{type(model).__name__}")
    example = {k: build_inputs(v, error=PretrainedError) for k, v in recipe["example_inputs"].items()}
    example = inputs_like_model(model, example)
    model = transform(model, TTTConfig.from_dict(recipe["config"]), example, progress=progress, verify=False)
    state = model.state_dict()
    expected = {n for n in state if ".gated_ttt." in f".{n}"}
    found: dict[str, torch.Tensor] = {}
    for path in _weight_files(directory):
        with open_safetensors(path, "model weights", _FIX, error=PretrainedError) as f:
            for name in f.keys():
                if name in expected:
                    found[name] = f.get_tensor(name)
    missing = sorted(expected - set(found))
    if missing:
        raise PretrainedError(f"{directory} lacks the TTT tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
                              f"{_FIX}")
    with torch.no_grad():
        for name, t in found.items():
            if state[name].shape != t.shape:
                raise PretrainedError(f"saved tensor {name!r} {tuple(t.shape)} does not fit the model "
                                      f"{tuple(state[name].shape)}; {_FIX}")
            state[name].copy_(t)
    return model


def from_pretrained(pretrained_model_name_or_path: str | os.PathLike, *, subfolder: str | None = None,
                    progress: bool = False, **kwargs: Any) -> nn.Module:
    """Load a transformed diffusers model written by ``save_pretrained`` (a local directory).

    ``kwargs`` go to the diffusers class's ``from_pretrained`` (``torch_dtype``, ...). Returns the
    transformed model, equal to the one saved.
    """
    import diffusers

    directory = Path(pretrained_model_name_or_path) / (subfolder or "")
    recipe = _read_recipe(directory)
    cls = getattr(diffusers, str(recipe["_class_name"]), None)
    if cls is None:
        raise PretrainedError(f"{directory / 'config.json'} names the class {recipe['_class_name']!r}, which this "
                              f"diffusers ({diffusers.__version__}) does not have")
    with _quiet_unused_weights():  # the stock class ignores the TTT tensors; reapply loads them
        model = cls.from_pretrained(directory, **kwargs)
    return reapply(model, directory, progress=progress)


@contextlib.contextmanager
def _quiet_unused_weights():
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)

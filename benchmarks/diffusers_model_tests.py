"""Run diffusers' own model tests against models transformed by tttgraph (gates at 0).

Usage, from a diffusers checkout whose ``tests/`` fits the installed diffusers::

    cd path/to/diffusers
    python -m pytest -p benchmarks.diffusers_model_tests tests/models/transformers/test_models_transformer_cogvideox.py

with this repository on ``PYTHONPATH`` (``PYTHONPATH=/path/to/tttgraph``). Every tester class whose
config has ``model_class`` and ``get_dummy_inputs`` gets a ``model_class`` that builds the stock model
and returns ``tttgraph.transform(model, TTTConfig(gate_init=0.0), dummy inputs)``: the same object,
edited, which must then behave as the original in every test. ``from_pretrained`` of a directory the
transformed model saved loads it back transformed (``tttgraph.from_pretrained``); of a stock
directory, transforms what it loads. Run once without ``-p`` for the baseline.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import tttgraph
from tttgraph.config import TTTConfig

CONFIG = TTTConfig(gate_init=0.0, mini_batch_size=8)


class TransformedClass:
    """Stands in for a diffusers model class: constructors return transformed models."""

    def __init__(self, cls: type, tester: Any):
        self.cls, self.tester = cls, tester

    def _transform(self, model):
        model = tttgraph.transform(model, CONFIG, self.tester.get_dummy_inputs(), progress=False, verify=False)
        return model

    def __call__(self, *args: Any, **kwargs: Any):
        return self._transform(self.cls(*args, **kwargs))

    def from_config(self, *args: Any, **kwargs: Any):
        return self._transform(self.cls.from_config(*args, **kwargs))

    def from_pretrained(self, path: str | os.PathLike, *args: Any, **kwargs: Any):
        subfolder = kwargs.get("subfolder") or ""
        if os.path.isdir(os.path.join(path, subfolder)) and _saved_transformed(os.path.join(path, subfolder)):
            return tttgraph.from_pretrained(path, *args, **kwargs)
        out = self.cls.from_pretrained(path, *args, **kwargs)
        if isinstance(out, tuple):
            return (self._transform(out[0]), *out[1:])
        return self._transform(out)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self.cls)

    def __getattr__(self, name: str) -> Any:
        if name in ("cls", "tester"):  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.cls, name)


def _saved_transformed(directory: str) -> bool:
    import json

    try:
        with open(os.path.join(directory, "config.json")) as f:
            return "_tttgraph" in json.load(f)
    except (OSError, ValueError):
        return False


def _patch(cls: type) -> None:
    original = None
    for base in cls.__mro__:
        if "model_class" in base.__dict__:
            original = base.__dict__["model_class"]
            break
    if original is None or not hasattr(cls, "get_dummy_inputs") or getattr(cls, "_tttgraph_patched", False):
        return

    @functools.wraps(original.fget if isinstance(original, property) else original)
    def model_class(self):
        stock = original.fget(self) if isinstance(original, property) else original
        return TransformedClass(stock, self)

    cls.model_class = property(model_class)
    cls._tttgraph_patched = True


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if getattr(item, "cls", None) is not None:
            _patch(item.cls)

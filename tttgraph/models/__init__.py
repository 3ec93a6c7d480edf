"""Tiny, randomly initialised builds of the supported diffusers video transformers.

Used by tests, examples and the CLI's no-argument mode: each family builds in milliseconds on
CPU and runs a forward in a few milliseconds, so every rewrite can be checked on every family.
diffusers is imported only inside the builders; ``import tttgraph.models`` does not import it.

>>> model = build_tiny("cogvideox")
>>> inputs = example_inputs(model, num_frames=3)
>>> out = model(**inputs)
"""

from __future__ import annotations

from tttgraph.models.tiny import FAMILIES, Family, build_tiny, example_inputs, family_of

__all__ = ["FAMILIES", "Family", "build_tiny", "example_inputs", "family_of"]

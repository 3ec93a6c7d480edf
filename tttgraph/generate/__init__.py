"""One-minute multi-scene video generation from a storyboard (issue #7).

    from tttgraph.generate import GenerateOptions, generate
    generate(GenerateOptions(storyboard="story.toml", seconds=63, out="video.mp4"))

Modules: ``storyboard`` (format, validation), ``guidance`` (dynamic CFG), ``sampler`` (resumable
DPM loop), ``estimate`` (pre-run costs), ``video_io`` (MP4, PNG), ``distributed`` (head split under
torchrun), ``interop`` (diffusers ``CogVideoXPipeline``), ``pipeline`` (all of it), ``cli``.
diffusers and transformers are imported only inside the functions that need them.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GenerateOptions": "tttgraph.generate.pipeline",
    "GenerationResult": "tttgraph.generate.pipeline",
    "generate": "tttgraph.generate.pipeline",
    "load_models": "tttgraph.generate.pipeline",
    "plan": "tttgraph.generate.pipeline",
    "Storyboard": "tttgraph.generate.storyboard",
    "StoryboardError": "tttgraph.generate.storyboard",
    "load_storyboard": "tttgraph.generate.storyboard",
    "bundled_storyboard": "tttgraph.generate.storyboard",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tttgraph.generate' has no attribute {name!r}")


__all__ = list(_LAZY)

"""One-minute, multi-scene video from a storyboard: ``python -m examples.one_minute_video [flags]``.

The same as ``tttgraph generate`` (see ``tttgraph generate --help``). With no flags it writes
``video.mp4`` (63 s, 16 fps) and ``video.png`` (a contact sheet) from the bundled storyboard with tiny
CogVideoX-architecture models on the CPU; ``--pretrained DIR --ttt DIR`` use real weights.
The pipeline is ``tttgraph.generate.pipeline``; the Python call is
``tttgraph.generate.generate(GenerateOptions(...))``.
"""

from __future__ import annotations

import sys

from tttgraph.generate.cli import run

if __name__ == "__main__":
    sys.exit(run())

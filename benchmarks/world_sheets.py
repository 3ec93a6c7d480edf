"""Side-by-side contact sheets of held-out world stories from several runs of world_results.py (issue #21).

    python benchmarks/world_sheets.py runs/results --seconds 63 --stories 0 1 --out runs/results/sheets
      -> runs/results/sheets/story_00000_63s.png: ground truth, TTT, local attention (and full attention
         where the run exists), one frame per segment, with the scorer's verdicts

The runs are read from RESULTS/<name>/story_XXXXX.{mp4,story.json} for the names below (a run
without the story is left out); every run's story file must be the same story.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUNS = {"TTT": "world_{s}s", "local attention (gates 0)": "world_baseline_{s}s", "full attention": "world_full_{s}s"}


def run(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="the directory holding world_results.py's outputs, one folder per run")
    p.add_argument("--seconds", type=int, required=True, help="story length of the runs (e.g. 18 or 63)")
    p.add_argument("--stories", type=int, nargs="+", default=[0], help="story indices (default 0)")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    args = p.parse_args(argv)

    from tttgraph.data.evaluate import STORY_SUFFIX, read_story, read_video
    from tttgraph.data.sheets import comparison_sheet
    from tttgraph.errors import TTTGraphError
    from tttgraph.generate.video_io import write_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in args.stories:
        story, videos = None, {}
        for label, pattern in RUNS.items():
            stem = Path(args.results) / pattern.format(s=args.seconds) / f"story_{i:05d}"
            video, story_file = stem.with_suffix(".mp4"), stem.with_name(stem.name + STORY_SUFFIX)
            if not (video.is_file() and story_file.is_file()):
                continue
            this = read_story(story_file)
            if story is not None and this.to_json() != story.to_json():
                raise TTTGraphError(f"{story_file} is another story than the other runs' story {i}; compare runs "
                                    "made with the same --seed")
            story, videos[label] = this, read_video(video)
        if not videos:
            raise TTTGraphError(f"no run under {args.results} has story {i} at {args.seconds} s; run "
                                "benchmarks/world_results.py first")
        path = write_png(comparison_sheet(story, videos), out / f"story_{i:05d}_{args.seconds}s.png")
        print(f"wrote {path} ({', '.join(videos)})")
        written.append(path)
    return written


if __name__ == "__main__":
    run()

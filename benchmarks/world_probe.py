"""Variants of one world fine-tuning stage, each trained and scored on held-out stories (issue #21).

    python benchmarks/world_probe.py --config examples/configs/world/stage_9s.json \\
        --init-from runs/world_3s/ttt --out runs/probe_9s --stories 32 \\
        --variant default= --variant fast=train.lr_ttt=1e-3 --variant long=train.lr_ttt=1e-3,train.steps=800

A variant is NAME=OVERRIDES: comma-separated ``section.key=value`` pairs (JSON values; a bare word is
a string) applied to the stage file. Each variant trains into OUT/NAME (``tttgraph finetune``, resumed
if a checkpoint is there), is probed by ``world_memory.py`` (the colour it carries to later segments,
one forward pass per story: OUT/NAME/memory.json), then ``world_results.py`` generates ``--stories``
held-out stories of the stage's length with it into OUT/NAME/results (``--stories 0``: the memory
probe only); finished steps are skipped, so the probe resumes. The table (carried colour,
cross-segment consistency, by attribute, detection) is printed and written to OUT/probe.json.
``--curve`` also reads the carried colour at every training checkpoint the variant kept (give it
``checkpoint.every=500,checkpoint.keep=20``): OUT/NAME/curve.json and the row's ``curve``.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, dict[tuple[str, str], object]]:
    """``NAME=a.b=1,c.d=x`` -> (NAME, {("a", "b"): 1, ("c", "d"): "x"})."""
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: give NAME=OVERRIDES (NAME= for the stage file as it is)")
    overrides = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--variant {text!r}: {pair!r} is not section.key=value (e.g. train.lr_ttt=1e-3)")
        try:
            overrides[(section, field)] = json.loads(value)
        except json.JSONDecodeError:
            overrides[(section, field)] = value
    return name, overrides


def run(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the stage file the variants change")
    p.add_argument("--init-from", help="the previous stage's OUT/ttt (overrides the file's init_from)")
    p.add_argument("--weights", default="default", help="world base model weights ('default': the shipped ones)")
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES (repeatable)")
    p.add_argument("--stories", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="denoising steps of the results")
    p.add_argument("--max-steps", type=int, help="train every variant this many steps (smoke runs)")
    p.add_argument("--curve", action="store_true", help="the memory probe at every kept training checkpoint")
    p.add_argument("--memory-stories", type=int, default=64, help="held-out stories of the memory probe")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from tttgraph.finetune.stages import StageConfig
    from tttgraph.models.world_model import WEIGHTS_DIR

    if args.stories:
        from tttgraph.generate.video_io import require_mp4_writer

        require_mp4_writer()  # world_results.py writes MP4s: fail before any training, not after it
    base = json.loads(Path(args.config).read_text())
    seconds = int(base["clip_seconds"])
    weights = str(WEIGHTS_DIR) if args.weights == "default" else args.weights
    out = Path(args.out)

    def memory_probe(ttt: str, into: Path, *extra: str) -> None:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "world_memory.py"), "--world", weights, "--ttt",
                        ttt, "--seconds", str(seconds), "--stories", str(args.memory_stories), "--json", str(into),
                        *extra], check=True, cwd=ROOT)

    rows = []
    for text in args.variant:
        name, overrides = parse_variant(text)
        run_dir = out / name
        summary_path, memory_path = run_dir / "results" / "summary.json", run_dir / "memory.json"
        data = copy.deepcopy(base)
        for (section, field), value in overrides.items():
            data.setdefault(section, {})[field] = value
        data["name"] = f"{base['name']}-{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        config = run_dir / "stage.json"
        config.write_text(json.dumps(data, indent=2) + "\n")
        StageConfig.load(config)  # a bad override fails here, before any training
        start = time.perf_counter()
        if not (run_dir / "ttt" / "tttgraph_recipe.json").is_file():
            cmd = [sys.executable, "-m", "tttgraph", "finetune", "--config", str(config), "--pretrained", weights,
                   "--out", str(run_dir), "--no-progress"]
            if args.init_from:
                cmd += ["--init-from", args.init_from]
            if args.max_steps:
                cmd += ["--max-steps", str(args.max_steps)]
            if (run_dir / "checkpoints").is_dir():
                cmd.append("--resume")
            subprocess.run(cmd, check=True, cwd=ROOT)
        trained = time.perf_counter() - start
        if not memory_path.is_file():
            memory_probe(str(run_dir / "ttt"), memory_path)
        memory = json.loads(memory_path.read_text())
        curve_path = run_dir / "curve.json"
        if args.curve and not curve_path.is_file():
            start_from = args.init_from or data.get("init_from") or "none"  # what the checkpoints' weights go over
            memory_probe(start_from, curve_path, "--checkpoint", str(run_dir / "checkpoints"))
        curve = json.loads(curve_path.read_text()) if args.curve else []
        if args.stories and not summary_path.is_file():
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "world_results.py"), "--world", weights,
                            "--ttt", str(run_dir / "ttt"), "--seconds", str(seconds), "--stories", str(args.stories),
                            "--steps", str(args.steps), "--out", str(run_dir / "results")], check=True, cwd=ROOT)
        summary = json.loads(summary_path.read_text()) if args.stories else {}
        rows.append({"variant": name, "overrides": {f"{s}.{f}": v for (s, f), v in overrides.items()},
                     "train_seconds_this_run": round(trained, 1), "carried_colour": memory["carried_colour"],
                     "stated_colour": memory["stated_colour"],
                     **({"curve": [[Path(r["checkpoint"]).name, r["carried_colour"]] for r in curve]} if curve else {}),
                     **summary})
        # Written after every variant, so a run stopped by a time limit still reports what finished.
        (out / "probe.json").write_text(json.dumps(rows, indent=1) + "\n")
    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"

    print(f"{'variant':<16} {'carried':>7} {'consistency':>11} {'colour':>7} {'shape':>7} {'size':>7} "
          f"{'detection':>9} {'first':>7}")
    for r in rows:
        by = r.get("consistency_by_attribute", {})
        print(f"{r['variant']:<16} {pct(r['carried_colour']):>7} {pct(r.get('consistency')):>11} "
              f"{pct(by.get('colour')):>7} {pct(by.get('shape')):>7} {pct(by.get('size')):>7} "
              f"{pct(r.get('detection')):>9} {pct(r.get('first_appearance')):>7}")
    return rows


if __name__ == "__main__":
    run()

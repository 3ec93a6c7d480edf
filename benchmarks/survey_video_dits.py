"""Which of diffusers' video transformers tttgraph transforms: gates at 0 must reproduce the model.

Reads the tiny configs and dummy inputs of diffusers' own model tests (a diffusers checkout whose
``tests/`` fits the installed diffusers), builds each video transformer class, and for each reports:
whether ``tttgraph.transform(model, TTTConfig(gate_init=0.0), inputs)`` succeeds, the TTT layers it
adds, the max abs difference to the untouched model (<= 1e-5 to pass) or the error, and the times of
a bare capture and of the transform (which captures, plans, rewrites, edits and verifies)::

    python benchmarks/survey_video_dits.py path/to/diffusers [--classes Wan Mochi ...]

Nothing of diffusers' test code is copied: its tester classes are imported and asked for
``model_class``, ``get_init_dict()`` and ``get_dummy_inputs()``. A class with no tester in the checkout, or whose
testers all fail, is surveyed again from its tiny build in ``tttgraph.models.tiny.MORE_DITS`` when it has one
(tester ``MORE_DITS``; Kandinsky 5 and 6, Cosmos, whose diffusers config needs torchvision, and SanaWM and its
refiner, which have no tester), at 3 latent frames.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import time
import traceback
from pathlib import Path

import torch

VIDEO_CLASSES = (
    "WanTransformer3DModel WanVACETransformer3DModel SkyReelsV2Transformer3DModel ChronoEditTransformer3DModel "
    "HeliosTransformer3DModel AnyFlowTransformer3DModel AnyFlowFARTransformer3DModel WanAnimateTransformer3DModel "
    "WanAnimate2Transformer3DModel CogVideoXTransformer3DModel ConsisIDTransformer3DModel "
    "HunyuanVideoTransformer3DModel HunyuanVideoFramepackTransformer3DModel HunyuanVideo15Transformer3DModel "
    "LTXVideoTransformer3DModel LTX2VideoTransformer3DModel SanaWMLTX2RefinerTransformer3DModel "
    "Kandinsky5Transformer3DModel Kandinsky6Transformer3DModel Kandinsky6SRTransformer3DModel "
    "SanaVideoTransformer3DModel SanaWMTransformer3DModel AllegroTransformer3DModel CosmosTransformer3DModel "
    "EasyAnimateTransformer3DModel LatteTransformer3DModel MochiTransformer3DModel MotifVideoTransformer3DModel "
    "MiniMaxH3Transformer3DModel JoyImageEditTransformer3DModel JoyImageEditPlusTransformer3DModel "
    "TransformerTemporalModel"
).split()


def tester_configs(diffusers_root: Path):
    """(class name, tester instance) for every tester config in diffusers' transformer tests."""
    sys.path.insert(0, str(diffusers_root))
    seen = set()
    for path in sorted((diffusers_root / "tests" / "models" / "transformers").glob("test_models_transformer_*.py")):
        name = f"tests.models.transformers.{path.stem}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a test module for another diffusers version
            print(f"# skipped {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        for attr in vars(module).values():
            if not isinstance(attr, type) or "model_class" not in vars(attr) or not hasattr(attr, "get_init_dict"):
                continue
            try:
                tester = attr()
                cls = tester.model_class
            except Exception:
                continue
            key = (cls.__name__, attr.__name__)
            if cls.__name__ in VIDEO_CLASSES and key not in seen:
                seen.add(key)
                yield cls.__name__, attr.__name__, tester


class _MoreDiTTester:
    """A tester-like view of ``MORE_DITS[name]``: ``model_class``, ``get_init_dict()``, ``get_dummy_inputs()``."""

    frames = 3

    def __init__(self, name: str):
        import diffusers

        from tttgraph.models.tiny import MORE_DITS

        self.name, self.model_class = name, getattr(diffusers, name)
        self.config, self.make = MORE_DITS[name]

    def get_init_dict(self):
        return dict(self.config)

    def get_dummy_inputs(self):
        return self.make(self.frames, 0)

    def build(self):
        from tttgraph.models.tiny import build_more_dit

        return build_more_dit(self.name)[0]


def more_dit_configs(rows: list[dict]):
    """(class name, "MORE_DITS", tester) for each class of MORE_DITS that no diffusers tester row reproduced."""
    from tttgraph.models.tiny import MORE_DITS

    done = {r["class"] for r in rows if r["ok"]}
    for name in MORE_DITS:
        if name in VIDEO_CLASSES and name not in done:
            yield name, "MORE_DITS", _MoreDiTTester(name)


def first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return first_tensor(out.sample)
    if isinstance(out, (tuple, list)):
        return next(first_tensor(o) for o in out if first_tensor(o) is not None)
    return None


def survey(diffusers_root: Path, only: list[str] | None = None) -> list[dict]:
    rows = []
    for cls_name, tester_name, tester in tester_configs(diffusers_root):
        if not only or any(o.lower() in cls_name.lower() for o in only):
            rows.append(survey_one(cls_name, tester_name, tester))
    for cls_name, tester_name, tester in list(more_dit_configs(rows)):
        if not only or any(o.lower() in cls_name.lower() for o in only):
            rows.append(survey_one(cls_name, tester_name, tester))
    return rows


def survey_one(cls_name: str, tester_name: str, tester) -> dict:
    """One row: build the class from ``tester``, transform it with gates at 0, compare with the untouched model."""
    import tttgraph
    from tttgraph.config import TTTConfig

    row = {"class": cls_name, "tester": tester_name}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        if isinstance(tester, _MoreDiTTester):  # its own seeding (and adaLN-Zero parameters made random)
            model = tester.build()
        else:
            model = tester.model_class(**tester.get_init_dict()).eval()
        inputs = tester.get_dummy_inputs()
        with torch.no_grad():
            ref = first_tensor(model(**inputs))
        base = copy.deepcopy(model)
        from tttgraph.capture import capture

        tick = time.perf_counter()
        try:
            capture(copy.deepcopy(model), inputs, progress=False)
            row["capture_s"] = time.perf_counter() - tick
        except Exception:
            pass  # the transform below reports why
        tick = time.perf_counter()
        try:
            tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8), inputs, progress=False)
        except tttgraph.TTTGraphError as exc:
            if "rope=False" not in str(exc):
                raise
            # timed without the refused first try: a user whose heads are this small passes rope=False
            row["refused_s"] = time.perf_counter() - tick
            row["note"] = (f"rope=False (heads too small for 3D RoPE; the refused first try took "
                           f"{row['refused_s']:.2f}s)")
            model = copy.deepcopy(base)
            tick = time.perf_counter()
            tm = tttgraph.transform(model, TTTConfig(gate_init=0.0, mini_batch_size=8, rope=False), inputs,
                                    progress=False)
        row["transform_s"] = time.perf_counter() - tick
        with torch.no_grad():
            got = first_tensor(tm(**inputs))
        row["ttt_layers"] = len(tttgraph.plan_of(tm).ttt_modules)
        row["added"] = sum(p.numel() for n, p in tm.named_parameters() if ".gated_ttt." in n)
        row["max_diff"] = float((got - ref).abs().max())
        row["ok"] = row["max_diff"] <= 1e-5 and base is not None
    except Exception as exc:
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        if "--debug" in sys.argv:
            traceback.print_exc()
    row["seconds"] = time.perf_counter() - start
    detail = row.get("error", row.get("note", ""))
    ratio = row["transform_s"] / row["capture_s"] if "transform_s" in row and "capture_s" in row else float("nan")
    print(f"{cls_name:45s} {'ok ' if row['ok'] else 'NO '} {row.get('ttt_layers', '-'):>3} "
          f"{row.get('max_diff', float('nan')):9.2e} capture {row.get('capture_s', float('nan')):5.2f}s "
          f"transform {row.get('transform_s', float('nan')):5.2f}s ({ratio:4.2f}x) {tester_name}: {detail}",
          flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("diffusers_root", type=Path)
    p.add_argument("--classes", nargs="*", help="substrings of the class names to survey")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args()
    rows = survey(args.diffusers_root, args.classes)
    done = {r["class"] for r in rows if r["ok"]}
    failed = sorted({r["class"] for r in rows} - done)
    print(f"\nnot reproduced: {failed}")
    print(f"{len(done)} of {len(VIDEO_CLASSES)} classes reproduce with gates at 0; not surveyed: "
          f"{sorted(set(VIDEO_CLASSES) - {r['class'] for r in rows})}")


if __name__ == "__main__":
    main()

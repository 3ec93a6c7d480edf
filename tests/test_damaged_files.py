"""Every file tttgraph reads fails on damage with one clear error: the file, what is wrong, the fix.

For each kind of file (a tttgraph.save directory, a fine-tuning checkpoint, precomputed clips, a raw
sample, a stage config, a TTT config, a generation resume file, a storyboard, a pretrained model
directory, an exported ONNX file, the metrics log) a valid file is written with the project's own
writer, read once to show it is fine, then damaged in place (truncated, emptied, overwritten with
garbage, replaced by a directory, or a JSON list where an object belongs) and read again: the error
must be a TTTGraphError of the reader's own type whose message names the path, the damage and the fix.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tttgraph.errors import TTTGraphError  # noqa: E402

GARBAGE = b"\xff\xfe\x00\x80" + bytes(range(256)) * 4  # not UTF-8; as a safetensors header length: absurd

# What the message must say for each damage, by file format.
PROBLEM = {
    ("truncated", "json"): "truncated", ("truncated", "safetensors"): "truncated",
    ("truncated", "toml"): "invalid TOML", ("truncated", "onnx"): "truncated or not ONNX",
    ("empty", "*"): "is empty",
    ("garbage", "json"): "not UTF-8", ("garbage", "toml"): "not UTF-8", ("garbage", "csv"): "not UTF-8",
    ("garbage", "safetensors"): "header is garbage", ("garbage", "onnx"): "not ONNX",
    ("directory", "*"): "is a directory, not a file",
    ("json_list", "json"): "holds a JSON list, not a JSON object",
}


def damage(path: Path, how: str, fmt: str) -> str:
    """Damage ``path`` in place as ``how`` says; returns the phrase its error must contain."""
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(GARBAGE)
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "json_list":
        path.write_text("[1, 2, 3]\n")
    return PROBLEM.get((how, fmt)) or PROBLEM[(how, "*")]


@dataclass
class Case:
    """A file kind: ``make(tmp)`` writes valid files and returns the reader; ``target`` is the file
    to damage (relative to tmp), ``error`` the reader's error type, ``fix`` words of the fix."""

    make: Callable[[Path], Callable[[], object]]
    target: str
    fmt: str
    error: type[TTTGraphError]
    fix: str
    damages: tuple[str, ...] = ("truncated", "empty", "garbage", "directory")
    overrides: dict[str, tuple[str, str]] = field(default_factory=dict)  # damage -> (problem, fix) said instead


# ---------------------------------------------------------------------------------------------
# Builders: each writes valid files under tmp with the project's writers and returns their reader
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tttgraph.save directory of the tiny CogVideoX transformed as ``tttgraph generate`` does (3 s)."""
    from tttgraph import save
    from tttgraph.generate.pipeline import GenerateOptions, load_models, plan

    options = GenerateOptions(tiny=True, ttt="none", seconds=3, progress=False)
    return save(load_models(plan(options), options=options, out=lambda _: None).model,
                tmp_path_factory.mktemp("save") / "ttt")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A diffusers-format directory of the tiny CogVideoX bundle."""
    from tttgraph.models.cogvideox_bundle import save_bundle, tiny_bundle

    return save_bundle(tiny_bundle(0), tmp_path_factory.mktemp("pretrained") / "model")


def make_save(saved: Path):
    def make(tmp: Path):
        from tttgraph.checkpoint import read_recipe

        shutil.copytree(saved, tmp / "ttt")
        return lambda: read_recipe(tmp / "ttt")

    return make


def make_ttt_for_generate(saved: Path):
    """The --ttt directory of ``tttgraph generate``: its plan reads the recipe and the weights header."""
    def make(tmp: Path):
        from tttgraph.generate.pipeline import GenerateOptions, plan

        shutil.copytree(saved, tmp / "ttt")
        return lambda: plan(GenerateOptions(tiny=True, ttt=str(tmp / "ttt"), seconds=3, out=str(tmp / "v.mp4")))

    return make


def _tiny_training():
    from tttgraph.finetune.distributed import DistContext

    params = {"block.w": torch.nn.Parameter(torch.randn(3, 4)), "block.b": torch.nn.Parameter(torch.zeros(4))}
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return params, opt, sched, DistContext()


def make_train_checkpoint(tmp: Path):
    from tttgraph.finetune.checkpointing import load_checkpoint, save_checkpoint

    params, opt, sched, ctx = _tiny_training()
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.step()
    directory = save_checkpoint(tmp / "checkpoints", 2, params=params, optimizer=opt, scheduler=sched, ctx=ctx,
                                extra={}, keep=2)

    def read():
        params2, opt2, sched2, ctx2 = _tiny_training()
        return load_checkpoint(directory, params=params2, optimizer=opt2, scheduler=sched2, ctx=ctx2)

    return read


def make_precomputed(tmp: Path):
    """A precomputed directory of two 3 s clips (what precompute writes, by hand: no model needed)."""
    from safetensors.torch import save_file

    from tttgraph.finetune.dataset import MANIFEST, NULL_TEXT, PRECOMPUTED_FORMAT, PrecomputedClips

    root = tmp / "clips_3s"
    root.mkdir()
    save_file({"latents": torch.zeros(2, 13, 4, 4, 6), "text": torch.zeros(2, 1, 16, 16)},
              str(root / "shard-00000.safetensors"))
    save_file({"text": torch.zeros(1, 16, 16)}, str(root / NULL_TEXT))
    manifest = {"format": PRECOMPUTED_FORMAT, "version": 1, "clip_seconds": 3, "segments_per_clip": 1,
                "latent_frames": 13, "latent_shape": [4, 4, 6], "text_tokens_per_segment": 16, "text_dim": 16,
                "model": "tiny", "dataset": "../raw", "dtype": "float32", "shard_size": 2,
                "clips": ["a@0+1", "b@0+1"], "shards": [{"file": "shard-00000.safetensors", "clips": 2}],
                "complete": True}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return lambda: PrecomputedClips(root)[1]


def make_raw_sample(tmp: Path):
    from tttgraph.data.synthetic import write_dataset
    from tttgraph.finetune.dataset import scan_raw

    root = write_dataset(tmp / "raw", samples=1, seconds=3, height=32, width=48)
    return lambda: scan_raw(root)


def make_stage_config(tmp: Path):
    from tttgraph.finetune.stages import StageConfig

    (tmp / "stage.json").write_text(json.dumps({"train": {"steps": 4, "batch_size": 2}}))
    return lambda: StageConfig.load(tmp / "stage.json")


def make_ttt_config(tmp: Path):
    from tttgraph.config import TTTConfig

    TTTConfig(mini_batch_size=16).save(tmp / "ttt_config.json")
    return lambda: TTTConfig.load(tmp / "ttt_config.json")


def make_resume_file(tmp: Path):
    from tttgraph.generate.sampler import LatentCheckpoint, SamplerSettings, job_fingerprint

    shape = (1, 4, 2, 3, 4)
    job = job_fingerprint(SamplerSettings(steps=6), shape)
    LatentCheckpoint(tmp / "v.resume.safetensors", job).save(2, torch.randn(shape), torch.randn(shape))
    return lambda: LatentCheckpoint(tmp / "v.resume.safetensors", job).load()


def make_storyboard(tmp: Path):
    from tttgraph.generate.storyboard import bundled_storyboard, load_storyboard

    shutil.copy(bundled_storyboard(), tmp / "story.toml")  # cut in half: inside a paragraph's string
    return lambda: load_storyboard(tmp / "story.toml")


def make_json_storyboard(tmp: Path):
    from tttgraph.generate.storyboard import load_storyboard

    board = {"scenes": [{"segments": ["The scene takes place in a sunny meadow. The red circle chases the blue "
                                      "square. The camera does not move."]}]}
    (tmp / "story.json").write_text(json.dumps(board))
    return lambda: load_storyboard(tmp / "story.json")


def make_pretrained(pretrained: Path):
    def make(tmp: Path):
        from tttgraph.models.cogvideox_bundle import _check_dir

        shutil.copytree(pretrained, tmp / "model")
        return lambda: _check_dir(tmp / "model")  # what load_pretrained and `tttgraph finetune` check first

    return make


def make_pretrained_for_generate(pretrained: Path):
    def make(tmp: Path):
        from tttgraph.generate.pipeline import GenerateOptions, plan

        shutil.copytree(pretrained, tmp / "model")
        return lambda: plan(GenerateOptions(pretrained=str(tmp / "model"), ttt="none", seconds=3, height=32,
                                            width=48, out=str(tmp / "v.mp4")))

    return make


def _onnx_model(metadata: str):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["hidden_states"], ["out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tttgraph-test")
    model.ir_version = 9
    onnx.helper.set_model_props(model, {"tttgraph.frames": metadata})
    return model


def make_onnx(tmp: Path):
    import onnx

    from tttgraph.exporter import run_onnx

    onnx.save(_onnx_model(json.dumps({"kind": "static", "input": "hidden_states", "axis": None, "step": None,
                                      "offset": None, "text_per_segment": None})), str(tmp / "m.onnx"))
    return lambda: run_onnx(tmp / "m.onnx", {"hidden_states": torch.ones(1, 2)})


def make_metrics(tmp: Path):
    from tttgraph.finetune.trainer import COLUMNS, read_metrics

    rows = [",".join(COLUMNS)] + [",".join([str(s), "0.5", "0.001", "0.001", "1.0", "0.1", "20.0", str(s / 10)])
                                  for s in (1, 2, 3)]
    (tmp / "metrics.csv").write_text("\n".join(rows) + "\n")
    return lambda: read_metrics(tmp)


def cases(saved: Path, pretrained: Path) -> dict[str, Case]:
    from tttgraph.checkpoint import RestoreError
    from tttgraph.config import ConfigError
    from tttgraph.exporter import ExportError
    from tttgraph.finetune.checkpointing import TrainingCheckpointError
    from tttgraph.finetune.dataset import DatasetError
    from tttgraph.finetune.stages import StageConfigError
    from tttgraph.generate.pipeline import GenerateError
    from tttgraph.generate.sampler import LatentCheckpointError
    from tttgraph.generate.storyboard import StoryboardError
    from tttgraph.models.cogvideox_bundle import BundleError
    from tttgraph.safe_read import DamagedFileError

    json_damages = ("truncated", "empty", "garbage", "directory", "json_list")
    fix_save = "write the directory again with tttgraph.save"
    fix_ckpt = "resume (--resume) from the previous checkpoint"
    fix_pre, fix_model = "re-run the precompute", "download that file again"
    fix_board = "save the storyboard as UTF-8"
    return {
        "save recipe": Case(make_save(saved), "ttt/tttgraph_recipe.json", "json", RestoreError, fix_save,
                            json_damages),
        "save weights": Case(make_save(saved), "ttt/tttgraph_weights.safetensors", "safetensors", RestoreError,
                             fix_save),
        "generate --ttt recipe": Case(make_ttt_for_generate(saved), "ttt/tttgraph_recipe.json", "json",
                                      RestoreError, fix_save, json_damages),
        "generate --ttt weights": Case(make_ttt_for_generate(saved), "ttt/tttgraph_weights.safetensors",
                                       "safetensors", RestoreError, fix_save),
        "checkpoint trainer.json": Case(make_train_checkpoint, "checkpoints/step-000002/trainer.json", "json",
                                        TrainingCheckpointError, fix_ckpt, json_damages),
        "checkpoint model": Case(make_train_checkpoint, "checkpoints/step-000002/model-rank00000.safetensors",
                                 "safetensors", TrainingCheckpointError, fix_ckpt),
        "checkpoint optimizer": Case(make_train_checkpoint, "checkpoints/step-000002/optim-rank00000.safetensors",
                                     "safetensors", TrainingCheckpointError, fix_ckpt),
        "checkpoint rng": Case(make_train_checkpoint, "checkpoints/step-000002/rng-rank00000.safetensors",
                               "safetensors", TrainingCheckpointError, fix_ckpt),
        "precompute manifest": Case(make_precomputed, "clips_3s/manifest.json", "json", DatasetError, fix_pre,
                                    json_damages),
        "precompute shard": Case(make_precomputed, "clips_3s/shard-00000.safetensors", "safetensors", DatasetError,
                                 fix_pre),
        "precompute null text": Case(make_precomputed, "clips_3s/null_text.safetensors", "safetensors",
                                     DatasetError, fix_pre),
        "raw sample storyboard": Case(make_raw_sample, "raw/sample_00000.json", "json", DatasetError,
                                      "write the sample again", json_damages),
        "raw sample video": Case(make_raw_sample, "raw/sample_00000.safetensors", "safetensors", DatasetError,
                                 "write the sample again"),
        "stage config": Case(make_stage_config, "stage.json", "json", StageConfigError, "examples/configs/finetune",
                             json_damages),
        "TTT config": Case(make_ttt_config, "ttt_config.json", "json", ConfigError, "TTTConfig.save", json_damages),
        "generation resume file": Case(make_resume_file, "v.resume.safetensors", "safetensors", LatentCheckpointError,
                                       "delete it to start the generation over"),
        "storyboard TOML": Case(make_storyboard, "story.toml", "toml", StoryboardError, fix_board,
                                overrides={"truncated": ("invalid TOML", "Check the quoting")}),
        "storyboard JSON": Case(make_json_storyboard, "story.json", "json", StoryboardError, fix_board, json_damages,
                                overrides={"truncated": ("invalid JSON", "check commas, quotes and brackets"),
                                           "json_list": ("got list", "a storyboard is a table/object with a "
                                                                     "'scenes' list")}),
        "pretrained transformer config": Case(make_pretrained(pretrained), "model/transformer/config.json", "json",
                                              BundleError, fix_model, json_damages),
        "pretrained text encoder weights": Case(make_pretrained(pretrained), "model/text_encoder/model.safetensors",
                                                "safetensors", BundleError, fix_model),
        "pretrained scheduler config": Case(make_pretrained(pretrained), "model/scheduler/scheduler_config.json",
                                            "json", BundleError, fix_model, json_damages),
        "generate --pretrained config": Case(make_pretrained_for_generate(pretrained),
                                             "model/transformer/config.json", "json", GenerateError,
                                             "download it again", json_damages),
        "exported ONNX file": Case(make_onnx, "m.onnx", "onnx", ExportError, "export it again"),
        "metrics log": Case(make_metrics, "metrics.csv", "csv", DamagedFileError, "resume the run",
                            ("empty", "garbage", "directory")),
    }


CASE_NAMES = list(cases(Path("."), Path(".")))
PARAMS = [(name, how) for name in CASE_NAMES for how in cases(Path("."), Path("."))[name].damages]


@pytest.mark.parametrize(("name", "how"), PARAMS, ids=[f"{n}-{h}" for n, h in PARAMS])
def test_a_damaged_file_raises_one_clear_error(name, how, saved, pretrained, tmp_path):
    case = cases(saved, pretrained)[name]
    read = case.make(tmp_path)
    read()  # intact: reads fine
    path = tmp_path / case.target
    problem = damage(path, how, case.fmt)
    problem, fix = case.overrides.get(how, (problem, case.fix))
    with pytest.raises(case.error) as info:
        read()
    message = str(info.value)
    assert isinstance(info.value, TTTGraphError)
    assert str(path) in message, message
    assert problem in message, message
    assert fix in message, message
    assert "Traceback" not in message


def test_a_damaged_onnx_frame_rule_names_the_file(tmp_path):
    import onnx

    from tttgraph.exporter import ExportError, run_onnx

    for raw, problem in (('{"kind": "segm', "not JSON"), ("[1, 2]", "a JSON list, not an object"),
                         ('{"kind": "segments", "input": "hidden_states", "axis": "1", "step": 2, "offset": 1, '
                          '"text_per_segment": 4}', "'axis' = '1'")):
        onnx.save(_onnx_model(raw), str(tmp_path / "m.onnx"))
        with pytest.raises(ExportError, match="export it again") as info:
            run_onnx(tmp_path / "m.onnx", {"hidden_states": torch.ones(1, 2)})
        assert str(tmp_path / "m.onnx") in str(info.value) and problem in str(info.value), str(info.value)


def test_damaged_metadata_of_checkpoints_is_named(tmp_path):
    """Valid safetensors files whose metadata or tensor names are wrong."""
    from safetensors.torch import save_file

    from tttgraph.finetune.checkpointing import TrainingCheckpointError, check_checkpoint
    from tttgraph.generate.sampler import LatentCheckpoint, SamplerSettings, job_fingerprint

    step = tmp_path / "checkpoints" / "step-000002"
    for file, tensors, metadata, message in (
        ("optim", {"state.0.exp_avg": torch.zeros(1)}, {"optimizer": "{not json"}, "has damaged optimizer metadata"),
        ("optim", {"state.0.exp_avg": torch.zeros(1)}, None, r"lacks the metadata entry \['optimizer'\]"),
        ("optim", {"exp_avg": torch.zeros(1)}, {"optimizer": '{"param_groups": [], "scalars": {}}'},
         "holds the tensor 'exp_avg', not of the form state.<index>.<name>"),
        ("rng", {"gpu": torch.zeros(1)}, None, r"lacks the tensor\(s\) \['cpu'\]"),
    ):
        shutil.rmtree(tmp_path / "checkpoints", ignore_errors=True)
        make_train_checkpoint(tmp_path)
        check_checkpoint(step)
        save_file(tensors, str(step / f"{file}-rank00000.safetensors"), metadata=metadata)
        expected = f"{file}-rank00000.safetensors {message}.*; delete .*step-000002"
        with pytest.raises(TrainingCheckpointError, match=expected):
            check_checkpoint(step)

    shape = (1, 2)
    job = job_fingerprint(SamplerSettings(steps=6), shape)
    path = tmp_path / "v.resume.safetensors"
    LatentCheckpoint(path, job).save(2, torch.zeros(shape), None)
    save_file({"latents": torch.zeros(shape)}, str(path), metadata={
        "format": "tttgraph-generate-checkpoint", "version": "1", "step": "two", "fingerprint": json.dumps(job)})
    with pytest.raises(TTTGraphError, match="resume file .* has damaged metadata .*; delete it"):
        LatentCheckpoint(path, job).load()

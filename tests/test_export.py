"""tttgraph.export: torch.export archives and ONNX (stock ONNX Runtime) of transformed tiny models."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from tttgraph.errors import InputMismatchError
from tttgraph.layout import SequenceLayout, frames_and_segments, interleave_positions
from tttgraph.segment_attention import cross_attention_index, self_attention_index, text_attention_index
from tttgraph.segment_attention import whole_segment_index as segment_index

# Gates at 0.5 so that the TTT layers change the output; segments of 2 frames + 1 overlap, text
# 4 tokens per segment: 5 frames = 2 segments (8 text tokens), 9 frames = 4 segments (16 tokens).
FRAMES = ((5, 8), (9, 16))
FAMILIES = ("cogvideox", "wan2.1")
TOL = 1e-4

LAYOUTS = {
    "text_first": SequenceLayout(4, 16, 2, 1, True),
    "video_first": SequenceLayout(4, 16, 2, 1, False),
    "video_only": SequenceLayout(0, 16, 2, 1),
    "no_overlap": SequenceLayout(3, 4, 3, 0, True),
    "unsegmented": SequenceLayout(8, 16, None, 0, True),
}


@pytest.mark.parametrize("segments", [1, 2, 5])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_graph_built_indices_equal_the_eager_ones(name, segments):
    layout = LAYOUTS[name]
    s = layout.frames_per_segment
    frames = s * segments + layout.overlap_frames if s else 3 + segments
    tokens = layout.total_tokens(frames)
    assert frames_and_segments(layout, tokens) == (frames, layout.num_segments(frames))
    n = layout.num_segments(frames)
    for reverse in (False, True):
        got = interleave_positions(layout, frames, n, reverse)
        assert torch.equal(got, layout.deinterleave_index(frames, reverse=reverse)), reverse
    cases = [("self", tokens, self_attention_index(layout, frames))]
    if layout.text_tokens_per_segment:
        cases += [("cross", layout.video_tokens(frames), cross_attention_index(layout, frames)),
                  ("text", layout.text_tokens(frames), text_attention_index(layout.text_tokens_per_segment, n))]
    for kind, length, eager in cases:
        index = segment_index(layout, kind, length)
        assert len(eager.groups) == len(index.groups) == 1, kind
        for a, b in zip(eager.groups[0], index.groups[0], strict=True):
            assert torch.equal(a, b), kind
        assert torch.equal(eager.counts, index.counts), kind


def test_ttt_decomposition_matches_the_reference_with_a_short_last_mini_batch(tmp_path):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from tttgraph.exporter import onnx_feed
    from tttgraph.kernels.ttt_mlp.onnx_lowering import translation_table
    from tttgraph.ops import ttt_mlp

    heads, dim, hidden = 2, 8, 32
    gen = torch.Generator().manual_seed(0)

    class Scan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_w = torch.nn.Parameter(1 + 0.3 * torch.randn(heads, dim, generator=gen))
            self.ln_b = torch.nn.Parameter(0.1 * torch.randn(heads, dim, generator=gen))
            self.w1 = torch.nn.Parameter(0.3 * torch.randn(heads, dim, hidden, generator=gen))
            self.b1 = torch.nn.Parameter(0.1 * torch.randn(heads, hidden, generator=gen))
            self.w2 = torch.nn.Parameter(0.3 * torch.randn(heads, hidden, dim, generator=gen))
            self.b2 = torch.nn.Parameter(0.1 * torch.randn(heads, dim, generator=gen))

        def forward(self, q, k, v, eta):
            return ttt_mlp(q, k, v, eta, self.ln_w, self.ln_b, self.w1, self.b1, self.w2, self.b2,
                           mini_batch_size=8, eps=1e-5)

    def args(t):
        return {**{n: torch.randn(2, heads, t, dim, generator=gen) for n in "qkv"},
                "eta": torch.rand(2, heads, t, generator=gen)}

    scan, seq = Scan(), torch.export.Dim("T", min=2, max=4096)
    with torch.no_grad():
        spec = {n: {2: seq} for n in ("q", "k", "v", "eta")}
        ep = torch.export.export(scan, (), kwargs=args(37), dynamic_shapes=spec)
    path = tmp_path / "scan.onnx"
    torch.onnx.export(ep, (), str(path), dynamo=True, custom_translation_table=translation_table("decompose"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (loop,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Loop"]
    # 4 carried states + 1 scan output (the per-mini-batch outputs, stacked by the runtime); the body
    # does not grow any tensor (a Concat there would make the scan quadratic in T).
    assert len(loop.input) == 2 + 4 and len(loop.output) == 4 + 1
    body = next(a.g for a in loop.attribute if a.name == "body")
    assert "Concat" not in {n.op_type for n in body.node}
    for t in (37, 64, 5, 2):  # 4 full + 5, whole mini-batches, one short mini-batch, T < 8
        x = args(t)
        with torch.no_grad():
            expected = scan(**x)
        got = torch.from_numpy(session.run(None, onnx_feed(x))[0])
        assert (got - expected).abs().max().item() <= 1e-5, t


@functools.cache
def _transform(family):
    """(model, transformed model, [(inputs, expected output)] at each of FRAMES), built once per family."""
    from tttgraph.config import TTTConfig
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.rewrite import transform

    model = build_tiny(family)
    cfg = TTTConfig(gate_init=0.5, mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    tm = transform(copy.deepcopy(model), cfg, example_inputs(model, 5, text_tokens=8), progress=False)
    cases = []
    for frames, text in FRAMES:
        inputs = example_inputs(model, frames, text_tokens=text, seed=frames)
        with torch.no_grad():
            cases.append((inputs, tm(**inputs, return_dict=False)[0]))
    return model, tm, cases


@pytest.fixture(params=FAMILIES)
def transformed(request):
    pytest.importorskip("diffusers")
    return (request.param, *_transform(request.param))


@pytest.fixture
def cogvideox():
    pytest.importorskip("diffusers")
    return _transform("cogvideox")


@pytest.fixture
def wan():
    pytest.importorskip("diffusers")
    return _transform("wan2.1")


def _gates_matter(model, tm, cases):
    inputs, expected = cases[0]
    with torch.no_grad():
        assert (model(**inputs, return_dict=False)[0] - expected).abs().max() > 1e-3


_FOLDER = tempfile.TemporaryDirectory(prefix="tttgraph-test-export-")


@functools.cache
def onnx_export(family):
    """The default ONNX export (dynamic frames, opset 23, TTT as a Loop) of a family's transformed model."""
    from tttgraph import export

    return export(_transform(family)[1], Path(_FOLDER.name) / f"{family}.onnx")


def test_onnx_runtime_matches_pytorch_at_two_frame_counts_from_one_file(transformed):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tttgraph.exporter import run_onnx

    family, model, tm, cases = transformed
    _gates_matter(model, tm, cases)
    result = onnx_export(family)
    assert result.format == "onnx" and result.opset == 23 and result.ttt_op == "decompose"
    assert result.frame_rule.kind == "segments" and (result.frame_rule.step, result.frame_rule.offset) == (2, 1)
    proto = onnx.load(str(result.path))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Loop"] == 4 and ops["Attention"] >= 2  # 2 TTT layers x 2 directions; segment attention
    assert not any(n.domain not in ("", "ai.onnx") for n in proto.graph.node)
    assert [i.name for i in proto.graph.input] == result.input_names
    if family == "cogvideox":
        assert result.input_names[-2:] == ["image_rotary_emb_0", "image_rotary_emb_1"]
    assert [o.name for o in proto.graph.output] == ["sample"]
    for inputs, expected in cases:
        got = torch.from_numpy(run_onnx(result.path, inputs))
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= TOL


def test_pt2_archive_reloads_and_matches(transformed, tmp_path):
    from tttgraph import export, graph_form

    family, model, tm, cases = transformed
    result = export(tm, tmp_path / f"{family}.pt2")
    assert result.format == "pt2" and "2*n + 1" in result.frames
    ep = torch.export.load(result.path)
    ttt = [n for n in ep.graph.nodes if n.target is torch.ops.tttgraph.ttt_mlp.default]
    assert len(ttt) == 4 and all(n.args[-1] is False for n in ttt)  # inference: no saved state
    module = ep.module()
    for inputs, expected in cases:
        with torch.no_grad():
            got = module(**{k: inputs[k] for k in graph_form(tm).info.graph_inputs})
        assert (got - expected).abs().max().item() <= 1e-5


def test_custom_node_form_passes_the_onnx_checker(cogvideox, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from tttgraph import export
    from tttgraph.kernels.ttt_mlp.onnx_lowering import register_schema

    _, tm, _ = cogvideox
    result = export(tm, tmp_path / "custom.onnx", ttt_op="custom", dynamic_frames=False)
    proto = onnx.load(str(result.path))
    custom = [n for n in proto.graph.node if n.domain == "tttgraph"]
    assert len(custom) == 4 and {n.op_type for n in custom} == {"TTTMLP"}
    assert {a.name for a in custom[0].attribute} == {"mini_batch_size", "eps"}
    assert "Loop" not in {n.op_type for n in proto.graph.node}
    register_schema()
    onnx.checker.check_model(proto, full_check=True)


def test_errors_name_the_fix(cogvideox, tmp_path):
    from tttgraph import export
    from tttgraph.capture import CapturedModel
    from tttgraph.exporter import ExportError, NotTransformedError, UnsupportedOpsetError, run_onnx

    model, tm, cases = cogvideox
    with pytest.raises(NotTransformedError, match="tttgraph.transform"):
        export(model, tmp_path / "m.pt2")
    with pytest.raises(NotTransformedError, match="transform it first"):
        export(CapturedModel.capture(model, cases[0][0], progress=False), tmp_path / "m.pt2")
    with pytest.raises(ExportError, match=r"name it \.pt2, \.onnx, \.engine, \.plan"):
        export(tm, tmp_path / "m.bin")
    with pytest.raises(ExportError, match="format='trt' is not one of"):
        export(tm, tmp_path / "m.onnx", format="trt")
    with pytest.raises(ExportError, match="external_data applies to ONNX files only"):
        export(tm, tmp_path / "m.pt2", external_data=True)
    with pytest.raises(ExportError, match="external_data='yes' must be None"):
        export(tm, tmp_path / "m.onnx", external_data="yes")
    pytest.importorskip("onnxscript")
    for opset in (17, 99):
        with pytest.raises(UnsupportedOpsetError, match="pass opset between 18 and"):
            export(tm, tmp_path / "m.onnx", opset=opset)
    with pytest.raises(ExportError, match="ttt_op"):
        export(tm, tmp_path / "m.onnx", ttt_op="plugin")
    inputs = dict(cases[0][0])
    del inputs["timestep"]
    with pytest.raises(InputMismatchError, match=r"missing \['timestep'\]"):
        export(tm, tmp_path / "m.pt2", example_inputs=inputs)
    pytest.importorskip("onnxruntime")
    result = export(tm, tmp_path / "static.onnx", dynamic_frames=False)
    assert result.frames.startswith("5 ")
    with pytest.raises(InputMismatchError, match=r"missing \['timestep'\]"):
        run_onnx(result.path, inputs)
    with pytest.raises(InputMismatchError, match="'hidden_states' has shape"):
        run_onnx(result.path, cases[1][0])  # 9 frames into a 5-frame file


def test_run_onnx_checks_the_frame_rule_recorded_in_the_file(cogvideox):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from tttgraph.exporter import FRAMES_METADATA, run_onnx
    from tttgraph.models import example_inputs

    model, _, _ = cogvideox
    result = onnx_export("cogvideox")
    meta = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    rule = json.loads(meta[FRAMES_METADATA])
    assert rule["kind"] == "segments" and (rule["step"], rule["offset"], rule["text_per_segment"]) == (2, 1, 4)
    assert rule["text_dims"] == {"encoder_hidden_states": [1]} and rule["segments"][0] == 2
    # Without the check ONNX Runtime runs 6 frames (not whole segments) and returns garbage.
    with pytest.raises(InputMismatchError, match=r"6 latent frames; this file takes 2\*n \+ 1 frames"):
        run_onnx(result.path, example_inputs(model, 6, text_tokens=8))
    with pytest.raises(InputMismatchError, match=r"'encoder_hidden_states' has 8 tokens.*4 per segment = 12"):
        run_onnx(result.path, example_inputs(model, 7, text_tokens=8))


def test_hunyuanvideo_onnx_runs_in_onnx_runtime_at_two_frame_counts(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tttgraph import export
    from tttgraph.exporter import run_onnx

    model, tm, cases = _transform("hunyuanvideo")
    _gates_matter(model, tm, cases)
    result = export(tm, tmp_path / "hunyuan.onnx")
    # Its attention mask is a masked_fill on a bool tensor: an ONNX Where on bools, which ONNX
    # Runtime has no kernel for; the exporter writes it with And/Or/Not.
    assert any("bool Where" in note for note in result.notes), result.notes
    proto = onnx.load(str(result.path))
    bool_values = {v.name for v in proto.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.BOOL}
    assert not [n for n in proto.graph.node if n.op_type == "Where" and n.output[0] in bool_values]
    for inputs, expected in cases:
        got = torch.from_numpy(run_onnx(result.path, inputs))
        assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("opset", [18, 23])
def test_onnx_fixes_run_graphs_that_onnx_runtime_rejects_as_exported(tmp_path, opset):
    """squeeze of a non-1 dim (Allegro), a bool Where (HunyuanVideo), a [B, 1, 1, L] attention mask (LTX).

    At opset 18 SDPA exports as MatMul/Softmax (no Attention operator yet) and needs no mask fix.
    """
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from onnxscript import ir

    from tttgraph.exporter import FrameRule, _onnx_program, _save_onnx, onnx_feed

    class Gaps(torch.nn.Module):
        def forward(self, x, q, k, v, kv_mask):
            kept = x.squeeze(1)  # dim 1 is N >= 2: torch leaves x as it is
            flags = (x > 0).masked_fill(x < -1, True)
            attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=kv_mask)
            return torch.cat([kept.flatten(), flags.float().flatten(), attn.flatten()])

    gen = torch.Generator().manual_seed(0)
    inputs = {"x": torch.randn(1, 6, 4, generator=gen), **{n: torch.randn(1, 2, 5, 8, generator=gen) for n in "qkv"},
              "kv_mask": torch.randn(1, 1, 1, 5, generator=gen)}
    with torch.no_grad():
        ep = torch.export.export(Gaps(), (), kwargs=inputs, dynamic_shapes={
            "x": {1: torch.export.Dim("n", min=2, max=64)}, "q": None, "k": None, "v": None, "kv_mask": None})
        expected = Gaps()(**inputs)
    program, names, notes = _onnx_program(ep, inputs, opset, "decompose", FrameRule("static"), "static")
    attention = int(opset >= 23)
    assert names == list(inputs) and len(notes) == 1 + attention, notes
    ops = Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(program.model.graph))
    assert ops["Squeeze"] == 0 and ops["Attention"] == attention and ops["Or"] == 1 and ops["Where"] == 0
    assert ops["Softmax"] == 1 - attention
    path = tmp_path / "gaps.onnx"
    _save_onnx(program.model, path, external=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, onnx_feed(inputs))[0])
    assert (got - expected).abs().max().item() <= 1e-5
    wider = {**inputs, "x": torch.randn(1, 9, 4, generator=gen)}
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(session.run(None, onnx_feed(wider))[0]), Gaps()(**wider), atol=1e-5)


def test_weights_over_the_threshold_go_to_external_data(wan, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from onnxscript import ir

    from tttgraph import export, exporter
    from tttgraph.exporter import _save_onnx, run_onnx

    _, tm, cases = wan
    inputs, expected = cases[0]
    monkeypatch.setattr(exporter, "EXTERNAL_DATA_BYTES", 64 * 1024)  # stands in for 1.5 GiB
    result = export(tm, tmp_path / "wan.onnx", dynamic_frames=False)
    onnx_file, data = tmp_path / "wan.onnx", tmp_path / "wan.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wan.onnx", "wan.onnx.data"]  # no temporary files left
    outside, inside = data.stat().st_size, onnx_file.stat().st_size
    assert outside >= 0.9 * sum(p.numel() * 4 for p in tm.parameters())
    assert result.bytes == inside + outside
    assert any("wan.onnx.data" in note for note in result.notes)
    assert (torch.from_numpy(run_onnx(onnx_file, inputs)) - expected).abs().max().item() <= TOL
    # Saved again with the weights inline, the stale .data file goes and the file still runs alone.
    _save_onnx(ir.load(str(onnx_file)), onnx_file, external=False)
    assert not data.exists() and onnx_file.stat().st_size >= inside + 0.9 * outside
    assert (torch.from_numpy(run_onnx(onnx_file, inputs)) - expected).abs().max().item() <= TOL


def test_dynamic_export_needs_whole_segments():
    pytest.importorskip("diffusers")
    from tttgraph import export
    from tttgraph.config import TTTConfig
    from tttgraph.exporter import ExportError
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.rewrite import transform

    model = build_tiny("wan2.1")
    cfg = TTTConfig(mini_batch_size=16, segment_latent_frames=2, segment_overlap_frames=1)
    tm = transform(copy.deepcopy(model), cfg, example_inputs(model, 4, text_tokens=8), progress=False)
    with pytest.raises(ExportError, match="needs whole segments.*5, 7, ... frames"):
        export(tm, "unused.pt2")


def test_export_imports_no_onnx_until_used():
    code = (
        "import json, sys, tttgraph, tttgraph.exporter, tttgraph.tensorrt_export\n"
        "f = tttgraph.export\n"
        "lazy = ('onnx', 'onnxruntime', 'onnxscript', 'tensorrt', 'torch_tensorrt')\n"
        "print(json.dumps([callable(f), [m for m in lazy if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, []]


def test_cli_export_writes_a_loadable_archive(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from tttgraph.cli import main

    out = tmp_path / "wan.pt2"
    assert main(["export", "--family", "wan2.1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "exported pt2" in printed and "2*n + 1" in printed
    assert torch.export.load(out).module() is not None


def test_a_graph_that_follows_the_examples_branches_is_not_exported(cogvideox, tmp_path, monkeypatch):
    import dataclasses

    from tttgraph import export, rewrite
    from tttgraph.capture import _META_KEY, CapturedModel
    from tttgraph.exporter import ExportError

    _, tm, _ = cogvideox
    real = rewrite.graph_form

    def branchy(model, example_inputs=None):  # as if the model had branched on tensor values at capture
        graph = real(model, example_inputs)
        gm = graph.graph_module
        gm.meta[_META_KEY] = dataclasses.replace(gm.meta[_META_KEY], branches=(True,))
        return CapturedModel(gm)

    monkeypatch.setattr(rewrite, "graph_form", branchy)
    with pytest.raises(ExportError, match=r"branches on tensor values \(the example took \[True\]\)"):
        export(tm, tmp_path / "m.pt2")

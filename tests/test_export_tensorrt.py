"""The TensorRT paths without TensorRT: what CI can check on a CPU machine.

TensorRT needs an NVIDIA GPU and is not installed here. These tests check everything around it:
the ONNX file TensorRT would parse uses only operators its ONNX parser supports, the optimization
profile, the TTT decomposition that torch-tensorrt would compile, argument validation and the
error that names the install command. Building and running an engine is not tested.
"""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch

from tests.test_export import _transform, onnx_export

NO_TENSORRT = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "torch_tensorrt")),
    reason="checks the behaviour without TensorRT",
)


@functools.cache
def _program(family, dynamic_frames=True):
    from tttgraph.export_program import export_program

    return export_program(_transform(family)[1], dynamic_frames=dynamic_frames)


@pytest.mark.parametrize("family", ["cogvideox", "wan2.1"])
def test_the_decomposed_onnx_file_uses_only_what_tensorrt_parses(family):
    pytest.importorskip("diffusers")
    pytest.importorskip("onnxscript")
    from tttgraph.tensorrt_export import TENSORRT_ONNX_OPS, check_onnx

    result = onnx_export(family)
    report = check_onnx(result.path)
    assert report.problems == []
    assert report.ops["Loop"] == 4 and report.ops["Attention"] >= 2
    assert set(report.ops) <= TENSORRT_ONNX_OPS
    assert any("Scan output length cannot be dynamic" in c for c in report.cautions)  # dynamic frames
    older = check_onnx(result.path, trt_version="10.8.0")
    assert older.problems and all("Attention" in p and "opset=22" in p for p in older.problems)


def test_check_onnx_reports_what_tensorrt_cannot_parse(tmp_path):
    pytest.importorskip("onnxscript")
    from onnxscript import ir

    from tttgraph.tensorrt_export import check_onnx

    graph = ir.from_onnx_text("""
        <ir_version: 10, opset_import: ["" : 23, "tttgraph" : 1]>
        g (float[2, 3] x, int64[1] axes) => (float[2, 3] y, float[2] z, uint8[2, 3] u) <uint8[2, 3] c> {
            y = tttgraph.TTTMLP(x)
            z = ReduceMean(x, axes)
            c = Cast<to = 2>(x)
            u = Identity(c)
            s = SequenceConstruct(x)
        }
    """)
    report = check_onnx(graph)
    text = " | ".join(report.problems)
    assert "1 tttgraph.TTTMLP node(s): custom domain: TensorRT needs a plugin" in text
    assert "1 SequenceConstruct node(s): not supported" in text
    assert "ReduceMean node 'z': input 1 must be a build-time constant" in text
    assert "Cast node 'c' makes a uint8 tensor" in text and "'u' makes" not in text  # u is a graph output
    assert report.cautions == []


def test_custom_node_form_is_refused_for_tensorrt(tmp_path):
    pytest.importorskip("diffusers")
    from tttgraph import export
    from tttgraph.exporter import ExportError

    with pytest.raises(ExportError, match="no plugin for tttgraph.TTTMLP; use ttt_op='decompose'"):
        export(_transform("cogvideox")[1], tmp_path / "m.engine", ttt_op="custom")


@NO_TENSORRT
def test_missing_tensorrt_names_the_install_command_before_any_work(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    from tttgraph import export, exporter
    from tttgraph.tensorrt_export import TensorRTUnavailableError, build_engine, compile_torch_tensorrt

    tm = _transform("cogvideox")[1]
    monkeypatch.setattr(exporter, "export_program", lambda *a, **k: pytest.fail("exported before checking"))
    for path, format in ((tmp_path / "m.engine", None), (tmp_path / "m.plan", None), (tmp_path / "m", "tensorrt")):
        with pytest.raises(TensorRTUnavailableError, match=r"pip install 'tttgraph\[tensorrt\]'"):
            export(tm, path, format=format)
    with pytest.raises(TensorRTUnavailableError, match="'torch_tensorrt' package"):
        compile_torch_tensorrt(tm)
    with pytest.raises(exporter.ExportError, match="no ONNX file at"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine", {})
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(exporter.ExportError, match="workspace_bytes=0 must be a positive int"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", {}, workspace_bytes=0)
    with pytest.raises(TensorRTUnavailableError, match="'tensorrt' package"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", {})
    assert not (tmp_path / "m.engine").exists()


def test_compile_arguments_are_checked_before_importing():
    pytest.importorskip("diffusers")
    from tttgraph.exporter import ExportError
    from tttgraph.tensorrt_export import compile_torch_tensorrt

    tm = _transform("cogvideox")[1]
    with pytest.raises(ExportError, match=r"ttt='plugin' is not one of \('fallback', 'decompose'\)"):
        compile_torch_tensorrt(tm, ttt="plugin")
    with pytest.raises(ExportError, match="pass dynamic_frames=False"):
        compile_torch_tensorrt(tm, ttt="decompose")


def test_profile_spans_the_segments_asked_for():
    pytest.importorskip("diffusers")
    from tttgraph.export_program import ExportError, flat_input_names
    from tttgraph.tensorrt_export import profile_shapes

    ep, named, rule, _ = _program("cogvideox")
    names = flat_input_names(named)
    profile, notes = profile_shapes(ep, names, rule)  # default: fewest segments allowed .. the example's
    assert profile["hidden_states"] == ((1, 5, 4, 8, 8),) * 3 and rule.segments[0] == 2
    profile, notes = profile_shapes(ep, names, rule, segments=(2, 3, 4))
    assert [s[1] for s in profile["hidden_states"]] == [5, 7, 9]
    assert [s[1] for s in profile["encoder_hidden_states"]] == [8, 12, 16]
    assert profile["timestep"] == ((1,),) * 3
    video_tokens = [s[0] for s in profile["image_rotary_emb_0"]]
    assert video_tokens == [5 * 16, 7 * 16, 9 * 16] and notes == []
    for bad in ((1, 3, 4), (3, 2, 4), (2, 3)):
        with pytest.raises(ExportError, match="segments="):
            profile_shapes(ep, names, rule, segments=bad)


def test_ttt_decomposition_for_torch_tensorrt_matches_the_op():
    pytest.importorskip("diffusers")
    from tttgraph.exporter import ExportError
    from tttgraph.tensorrt_export import decompose_ttt

    _, tm, _ = _transform("cogvideox")
    ep, named, _, _ = _program("cogvideox", dynamic_frames=False)
    with torch.no_grad():
        expected = tm(**named, return_dict=False)[0]
    decomposed = decompose_ttt(ep)
    targets = {str(n.target) for n in decomposed.graph.nodes if n.op == "call_function"}
    assert not any("tttgraph" in t for t in targets)
    assert any("scaled_dot_product_attention" in t for t in targets)  # the rest is left as it was
    with torch.no_grad():
        got = decomposed.module()(**named)
    assert (got - expected).abs().max().item() <= 1e-5
    dynamic, _, _, _ = _program("cogvideox")
    with pytest.raises(ExportError, match="needs a static sequence length.*dynamic_frames=False"):
        decompose_ttt(dynamic)

"""Capture of the eight tiny diffusers families: exact outputs, gradients, names, drop-in calls."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import torch

from tttgraph.capture import CapturedModel, capture, capture_info
from tttgraph.errors import CaptureError, InputMismatchError
from tttgraph.models import FAMILIES, build_tiny, example_inputs

pytest.importorskip("diffusers")

SDPA = torch.ops.aten.scaled_dot_product_attention.default
DYNAMIC = ["cogvideox", "cogvideox1.5", "wan2.1", "hunyuanvideo", "mochi", "allegro"]
STATIC = ["ltx-video", "latte"]


@functools.cache
def tiny_capture(family: str):
    """(model, example inputs, GraphModule), captured once per test session and shared."""
    model = build_tiny(family)
    inputs = example_inputs(model)
    return model, inputs, capture(model, inputs, progress=False)


def _sample(out):
    return out.sample if hasattr(out, "sample") else out[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_eager_and_keeps_parameters(family):
    model, inputs, gm = tiny_capture(family)
    with torch.no_grad():
        ref, out = _sample(model(**inputs)), _sample(gm(**inputs))
    assert (out - ref).abs().max().item() <= 1e-6
    assert any(n.target is SDPA for n in gm.graph.nodes)
    params = dict(gm.named_parameters())
    assert params.keys() == dict(model.named_parameters()).keys()
    # The very same tensors: training the graph trains the pretrained weights.
    assert all(params[name] is p for name, p in model.named_parameters())
    assert dict(gm.named_buffers()).keys() >= dict(model.named_buffers()).keys()


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_matches_eager(family):
    model, inputs, gm = tiny_capture(family)
    gm.train()
    try:
        assert gm.training
        params = [p for p in model.parameters() if p.requires_grad]
        ref = torch.autograd.grad(_sample(model(**inputs)).square().mean(), params, allow_unused=True)
        got = torch.autograd.grad(_sample(gm(**inputs)).square().mean(), params, allow_unused=True)
    finally:
        gm.eval()
    for r, g in zip(ref, got, strict=True):
        assert (r is None) == (g is None)
        if r is not None:
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", DYNAMIC)
def test_dynamic_frames_run_longer_than_captured(family):
    model, inputs, gm = tiny_capture(family)
    info = capture_info(gm)
    fam = FAMILIES[family]
    assert info.dynamic_frames and info.latent_frames == fam.default_frames
    longer = example_inputs(model, fam.default_frames + 2 * fam.frame_multiple, seed=1)
    with torch.no_grad():
        ref, out = _sample(model(**longer)), _sample(CapturedModel(gm)(**longer))
    assert out.shape == ref.shape and (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", STATIC)
def test_static_families_refuse_other_frame_counts(family):
    model, inputs, gm = tiny_capture(family)
    info = capture_info(gm)
    assert not info.dynamic_frames and info.frame_range == (info.latent_frames,) * 2
    assert family.split("-")[0] in info.frames_note.lower()
    with pytest.raises(CaptureError, match="dynamic_frames=False"):
        capture(model, inputs, dynamic_frames=True, progress=False)
    other = example_inputs(model, FAMILIES[family].default_frames - 1)
    with pytest.raises(InputMismatchError, match="re-capture"):
        CapturedModel(gm)(**other)


def test_drop_in_call_conventions():
    model, inputs, gm = tiny_capture("cogvideox")
    wrapped = CapturedModel(gm)
    assert wrapped.config is model.config and wrapped.dtype == torch.float32
    with torch.no_grad():
        ref = model(**inputs)
        by_keyword = wrapped(**inputs)
        positional = wrapped(
            inputs["hidden_states"], inputs["encoder_hidden_states"], inputs["timestep"],
            image_rotary_emb=inputs["image_rotary_emb"], return_dict=False,
        )
    assert type(by_keyword) is type(ref)
    assert torch.equal(by_keyword.sample, ref.sample)
    assert isinstance(positional, tuple) and len(positional) == 1
    assert torch.equal(positional[0], ref.sample)
    assert wrapped.train().training and not wrapped.eval().training
    assert dict(wrapped.named_parameters()).keys() == {n for n, _ in model.named_parameters()}


def test_constants_accepted_with_captured_value_refused_otherwise():
    model, inputs, gm = tiny_capture("ltx-video")
    wrapped = CapturedModel(gm)
    with torch.no_grad():
        assert torch.equal(wrapped(**inputs, return_dict=False)[0], model(**inputs, return_dict=False)[0])
    with pytest.raises(InputMismatchError, match=r"'rope_interpolation_scale'.*re-capture"):
        wrapped(**{**inputs, "rope_interpolation_scale": (1.0, 32, 32)})
    _, cog_inputs, cog_gm = tiny_capture("cogvideox")
    with pytest.raises(InputMismatchError, match=r"'timestep_cond' was the constant None"):
        CapturedModel(cog_gm)(**cog_inputs, timestep_cond=torch.zeros(1, 4))
    _, latte_inputs, latte_gm = tiny_capture("latte")
    with pytest.raises(InputMismatchError, match="enable_temporal_attentions"):
        CapturedModel(latte_gm)(**{**latte_inputs, "enable_temporal_attentions": False})


def test_bad_dynamic_frames_value():
    model = build_tiny("wan2.1")
    with pytest.raises(CaptureError, match="dynamic_frames='yes'"):
        capture(model, example_inputs(model), dynamic_frames="yes")


def test_one_frame_capture_is_static_in_auto_and_refused_when_forced():
    model = build_tiny("wan2.1")
    with pytest.raises(CaptureError, match=">= 2 frames"):
        capture(model, example_inputs(model, 1), dynamic_frames=True, progress=False)


def test_core_modules_do_not_import_diffusers():
    code = (
        "import sys, tttgraph.models, tttgraph.capture, tttgraph.analysis, tttgraph.adapters; "
        "assert 'diffusers' not in sys.modules, 'diffusers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_model_captured_on_the_cpu_runs_where_it_is_moved(family):
    """torch.export bakes the capture device into device checks, .to() and factory ops; after
    capture the graph follows its inputs, so .to(device) works (here: the meta device, which
    fails exactly as CUDA did: "Tensor on device cpu is not on the expected device")."""
    model = build_tiny(family)
    inputs = example_inputs(model, FAMILIES[family].default_frames)
    cm = CapturedModel.capture(model, inputs, progress=False)
    baked = [n for n in cm.graph_module.graph.nodes if n.op == "call_function"
             and (isinstance(n.kwargs.get("device"), torch.device) or any(isinstance(a, torch.device) for a in n.args))]
    assert not baked, [n.format_node() for n in baked]
    assert not any(n.target is torch.ops.aten._assert_tensor_metadata.default for n in cm.graph_module.graph.nodes)
    expected = cm(**inputs, return_dict=False)[0]
    if family == "mochi":  # its nonzero() has no meta kernel (data-dependent size); the CPU run above checks it
        return
    out = cm.to("meta")(**{k: _to(v, "meta") for k, v in inputs.items()}, return_dict=False)[0]
    assert out.device.type == "meta" and out.shape == expected.shape and out.dtype == expected.dtype


def test_root_buffers_of_the_graph_follow_to():
    """Latte's temporal table is a buffer at the graph's root, registered on the wrapper too: after
    .to() the graph must read the moved tensor, not the one it was captured with."""
    model = build_tiny("latte")
    inputs = example_inputs(model)
    cm = CapturedModel.capture(model, inputs, progress=False)
    expected = cm(**inputs, return_dict=False)[0]
    cm.to("meta")
    assert cm.graph_module.temp_pos_embed is cm.temp_pos_embed
    assert cm.graph_module.temp_pos_embed.device.type == "meta"
    out = cm(**{k: _to(v, "meta") for k, v in inputs.items()}, return_dict=False)[0]
    assert out.device.type == "meta" and out.shape == expected.shape


class _Branchy(torch.nn.Module):
    """Takes one of two paths on a tensor's values (as HunyuanVideo 1.5 does on its image embeddings)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x, image):
        if torch.all(image == 0):
            return self.proj(x) * 2
        return self.proj(x) + 1


def test_a_branch_on_tensor_values_is_captured_as_the_example_takes_it():
    from tttgraph.capture import capture, capture_info

    model, x = _Branchy(), torch.randn(2, 4)
    for image, expected in ((torch.zeros(3), [True]), (torch.ones(3), [False])):
        gm = capture(model, {"x": x, "image": image}, progress=False)
        assert list(capture_info(gm).branches) == expected
        with torch.no_grad():
            torch.testing.assert_close(gm(x=x, image=image), model(x, image), rtol=0, atol=0)

"""Analysis of the eight tiny families: attention sites, their kinds and residual adds, layouts."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_capture import tiny_capture
from tttgraph.adapters import ADAPTERS, ModelAdapter, TokenLayout, get_adapter, register_adapter
from tttgraph.analysis import analyse, to_networkx
from tttgraph.capture import capture
from tttgraph.errors import LayoutInferenceError, NoAttentionFoundError, TTTGraphError
from tttgraph.models import FAMILIES, build_tiny, example_inputs
from tttgraph.passes import normalize_attention

pytest.importorskip("diffusers")

# (text, latent frames, token frames, tokens per frame, patch (t, h, w), order), site kinds.
EXPECTED = {
    "cogvideox": ((8, 3, 3, 16, (1, 2, 2), "text_first"), {"joint": 2}),
    "cogvideox1.5": ((8, 4, 2, 16, (2, 2, 2), "text_first"), {"joint": 2}),
    "wan2.1": ((8, 3, 3, 16, (1, 2, 2), "video_only"), {"video": 2, "cross": 2}),
    "hunyuanvideo": ((8, 3, 3, 16, (1, 2, 2), "video_first"), {"text": 1, "joint": 2}),
    "mochi": ((8, 3, 3, 16, (1, 2, 2), "video_first"), {"other": 1, "joint": 2}),
    "ltx-video": ((8, 3, 3, 16, (1, 1, 1), "video_only"), {"video": 2, "cross": 2}),
    "latte": ((8, 4, 4, 16, (1, 2, 2), "video_only"), {"video": 4, "cross": 2}),
    "allegro": ((8, 3, 3, 16, (1, 2, 2), "video_only"), {"video": 2, "cross": 2}),
}


def _layout_numbers(layout: TokenLayout):
    return (layout.text_tokens, layout.latent_frames, layout.frames, layout.tokens_per_frame,
            layout.patch_size, layout.order)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_and_sites(family):
    model, inputs, gm = tiny_capture(family)
    result = analyse(gm, model)
    numbers, kinds = EXPECTED[family]
    assert _layout_numbers(result.layout) == numbers
    assert Counter(s.kind for s in result.sites) == kinds
    graph = to_networkx(gm)
    for site in result.sites:
        model.get_submodule(site.module_path)  # a real module of the original model
        if site.kind in ("joint", "video", "cross"):
            assert site.residual_adds, site
            assert all(nx.has_path(graph, site.name, add) for add in site.residual_adds)
            assert site.q_shape[0] * site.q_shape[-2] >= result.layout.tokens_per_frame


def test_site_details():
    model, _, gm = tiny_capture("cogvideox")
    joint = analyse(gm, model).sites[0]
    assert joint.module_path == "transformer_blocks.0.attn1"
    assert joint.q_shape == joint.k_shape == (1, 2, 8 + 3 * 16, 16)
    assert joint.residual_streams == ("video", "text")
    assert joint.out_projections == ("transformer_blocks.0.attn1.to_out.0",)

    model, _, gm = tiny_capture("hunyuanvideo")
    single = [s for s in analyse(gm, model).sites if s.module_path.startswith("single")][0]
    assert single.out_projections == () and single.residual_streams == ("joint",)

    model, _, gm = tiny_capture("latte")
    axes = Counter(s.axes for s in analyse(gm, model).by_kind("video"))
    assert axes == {"hw": 2, "t": 2}

    model, _, gm = tiny_capture("mochi")
    assert all(s.data_dependent for s in analyse(gm, model).by_kind("joint"))


@pytest.mark.parametrize("family", ["cogvideox", "wan2.1"])
def test_analysis_at_another_frame_count(family):
    model, _, gm = tiny_capture(family)
    result = analyse(gm, model, example_inputs(model, 5))
    assert result.layout.frames == 5
    longest = max(s.q_shape[-2] for s in result.sites)
    assert longest == result.layout.joint_tokens == 5 * 16 + (8 if family == "cogvideox" else 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_normalize_attention_is_a_no_op_on_diffusers_models(family):
    _, _, gm = tiny_capture(family)
    result = normalize_attention(gm)
    assert not result.modified and result.counts["rewritten"] == 0


class _Renamed:
    """A CogVideoX whose class name no adapter knows, as a user's own model would be."""

    @staticmethod
    def build():
        model = build_tiny("cogvideox")
        model.__class__ = type("MyVideoDiT", (type(model),), {})
        return model


def test_generic_fallback_infers_joint_layout():
    model = _Renamed.build()
    inputs = example_inputs(model)
    gm = capture(model, inputs, progress=False)
    result = analyse(gm, model)
    assert result.adapter == "generic"
    assert _layout_numbers(result.layout) == EXPECTED["cogvideox"][0]
    assert Counter(s.kind for s in result.sites) == {"joint": 2}


def test_register_adapter_for_a_new_model():
    class MyAdapter(ModelAdapter):
        model_classes = ("MyVideoDiT",)

        def layout(self, model, inputs):
            return TokenLayout("mine", 1, 8, 3, 3, 16, (4, 4), (1, 2, 2), "text_first")

    model = _Renamed.build()
    register_adapter("mine", MyAdapter())
    try:
        assert isinstance(get_adapter(model), MyAdapter)
        with pytest.raises(TTTGraphError, match="already registered"):
            register_adapter("mine", MyAdapter())
        with pytest.raises(TTTGraphError, match="ModelAdapter instance"):
            register_adapter("other", object())
    finally:
        ADAPTERS.pop("mine")
    assert get_adapter(model).name == "generic"


class _SelfAttention(nn.Module):
    """x: [B, L, 8] -> [B, L, 8]; no video input, so no layout can be inferred."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        q = self.proj(x).view(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(x.shape)


def test_layout_error_names_the_adapter_to_write():
    model = _SelfAttention()
    gm = capture(model, {"x": torch.randn(1, 6, 8)}, progress=False)
    with pytest.raises(LayoutInferenceError, match=r"_SelfAttention.*register_adapter"):
        analyse(gm, model)


def test_no_attention_found():
    model = nn.Sequential(nn.Linear(4, 4))
    gm = capture(model, (torch.randn(2, 4),), progress=False)
    with pytest.raises(NoAttentionFoundError, match="normalize_attention"):
        analyse(gm, model)

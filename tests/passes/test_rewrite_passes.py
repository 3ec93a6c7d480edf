"""The rewriting passes on small hand-made graphs: counters, the op in the graph, negative cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tttgraph.analysis import AttentionSite
from tttgraph.config import TTTConfig
from tttgraph.errors import BackendUnavailableError, PassContractError
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.layout import SequenceLayout
from tttgraph.passes.insert_ttt import InsertTTT, TTTSite
from tttgraph.passes.lower_ttt import LowerTTT
from tttgraph.passes.segment_attention import SegmentAttentionPass
from tttgraph.passes.verify import check_order_preserved, node_order
from tttgraph.segment_attention import SegmentAttention

LAYOUT = SequenceLayout(2, 3, frames_per_segment=2, overlap_frames=1)
FRAMES = 5
N = LAYOUT.total_tokens(FRAMES)  # ceil((5 - 1) / 2) = 2 segments: 4 text + 15 video tokens


class Attn(torch.nn.Module):
    def __init__(self, causal=False):
        super().__init__()
        self.qkv, self.out, self.causal = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8), causal

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(o.transpose(1, 2).flatten(2))


class Block(torch.nn.Module):
    def __init__(self, causal=False):
        super().__init__()
        self.attn = Attn(causal)

    def forward(self, x):
        return x + 0.5 * self.attn(x)


def _graph(causal=False):
    torch.manual_seed(0)
    model = Block(causal)
    x = torch.randn(1, N, 8)
    gm = torch.export.export(model, (x,), strict=False).module()
    site = AttentionSite(
        name="scaled_dot_product_attention", index=0, module_path="attn", module_type="Attn",
        q_shape=(1, 2, N, 4), k_shape=(1, 2, N, 4), v_shape=(1, 2, N, 4), kind="joint", axes="thw",
        has_mask=False, is_causal=causal, scale=None, out_projections=("attn.out",), residual_adds=(),
        residual_streams=(),
    )
    return model, x, gm, site


def test_segment_attention_rewrites_and_matches_the_module():
    model, x, gm, site = _graph()
    before = node_order(gm)
    result = SegmentAttentionPass({site.name: (site, LAYOUT)})(gm)
    check_order_preserved(before, gm, "segment_attention")
    assert result.counts == {"self": 1}
    assert not any(n.target is torch.ops.aten.scaled_dot_product_attention.default for n in gm.graph.nodes)
    assert isinstance(gm.get_submodule("attn.segment_attention"), SegmentAttention)
    q, k, v = model.attn.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
    seg = SegmentAttention(LAYOUT)(q, k, v)
    expected = x + 0.5 * model.attn.out(seg.transpose(1, 2).flatten(2))
    torch.testing.assert_close(gm(x), expected)


def test_segment_attention_leaves_causal_attention_alone():
    _, x, gm, site = _graph(causal=True)
    result = SegmentAttentionPass({site.name: (site, LAYOUT)})(gm)
    assert not result.modified and result.counts == {"skipped_causal": 1}
    assert sum(n.target is torch.ops.aten.scaled_dot_product_attention.default for n in gm.graph.nodes) == 1


def test_segment_attention_needs_segments():
    _, _, _, site = _graph()
    with pytest.raises(PassContractError, match="has no segments"):
        SegmentAttentionPass({site.name: (site, SequenceLayout(2, 3))})


def test_insert_ttt_goes_after_the_out_projection_before_the_residual():
    model, x, gm, site = _graph()
    result = InsertTTT([TTTSite(site, LAYOUT, None)], TTTConfig(mini_batch_size=8, gate_init=0.3))(gm)
    assert result.counts == {"inserted": 1}
    layer = gm.get_submodule("attn.gated_ttt")
    assert isinstance(layer, GatedBidirectionalTTT)
    call = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "attn.gated_ttt")
    assert call.args[0].meta["nn_module_stack"] and "attn.out" in str(call.args[0].meta["nn_module_stack"])
    expected = x + 0.5 * layer(model.attn(x))
    torch.testing.assert_close(gm(x), expected)


def test_lower_ttt_refuses_an_unavailable_backend_and_explains():
    _, _, gm, site = _graph()
    InsertTTT([TTTSite(site, LAYOUT, None)], TTTConfig(mini_batch_size=8))(gm)
    lower = LowerTTT("auto")
    assert lower(gm).counts == {"reference": 1}
    assert lower.reasons["attn.gated_ttt"]["reference"] == "ok"
    assert lower.reasons["attn.gated_ttt"]["cuda_sm90"] != "ok"
    with pytest.raises(BackendUnavailableError, match="attn.gated_ttt: backend='cuda_sm90' can't run"):
        LowerTTT("cuda_sm90")(gm)


def test_order_check_catches_a_moved_node():
    _, _, gm, _ = _graph()
    before = node_order(gm)
    last_placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    sdpa = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.scaled_dot_product_attention.default)
    last_placeholder.append(sdpa)  # what a careless pass might do: hoist a node above its inputs
    with pytest.raises(PassContractError, match="careless reordered existing nodes"):
        check_order_preserved(before, gm, "careless")

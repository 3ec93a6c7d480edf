"""The fine-tuning block benchmark: its plain-PyTorch block is diffusers' CogVideoXBlock, and it runs."""

from __future__ import annotations

import torch

from tttgraph.layout import SequenceLayout

from ..benchmark_scripts import load_benchmark


def _bench():
    return load_benchmark("bench_finetune_block")


def test_benchmark_block_equals_the_diffusers_block():
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    bench = _bench()
    torch.manual_seed(0)
    ref = CogVideoXBlock(32, 2, 16, time_embed_dim=16, attention_bias=True).eval()
    # One segment of 5 frames of 2x3 tokens: segment-local attention is the block's full attention.
    layout = SequenceLayout(8, 6, 12, 1)
    block = bench.CogVideoXBlock(2, 16, 16, layout, (2, 3), ttt=False, mini_batch=16, backend="reference").eval()
    names = {"norm1_linear": "norm1.linear", "norm1": "norm1.norm", "to_q": "attn1.to_q", "to_k": "attn1.to_k",
             "to_v": "attn1.to_v", "norm_q": "attn1.norm_q", "norm_k": "attn1.norm_k", "to_out": "attn1.to_out.0",
             "norm2_linear": "norm2.linear", "norm2": "norm2.norm", "ff_in": "ff.net.0.proj", "ff_out": "ff.net.2"}
    ref_state = ref.state_dict()
    block.load_state_dict({f"{mine}.{p}": ref_state[f"{theirs}.{p}"] for mine, theirs in names.items()
                           for p in ("weight", "bias")})
    video, text, temb = torch.randn(1, 30, 32), torch.randn(1, 8, 32), torch.randn(1, 16)
    no_rotation = torch.ones(30, 8), torch.zeros(30, 8)
    with torch.no_grad():
        want = ref(video, text, temb)
        got = block(video, text, temb, *no_rotation, 5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_benchmark_tiny_mode_prints_the_table(capsys):
    assert _bench().main(["--tiny", "--repeats", "1", "--seconds", "3", "6"]) == 0
    table = capsys.readouterr().out
    assert "| 6 s | 9 | 70 | with TTT | reference |" in table and table.count("no TTT") == 2

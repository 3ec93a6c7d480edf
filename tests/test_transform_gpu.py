"""The transformed model on CUDA (GPU machine): same outputs and gradients as on the CPU.

`backend="auto"` on CUDA runs the Triton forward where it applies (and the reference backward);
the CPU runs the reference. Tiny configs have F = 64 (Triton needs F % 64 == 0 on GPUs).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from tttgraph.config import TTTConfig  # noqa: E402
from tttgraph.models import build_tiny, example_inputs  # noqa: E402
from tttgraph.rewrite import plan_of, transform  # noqa: E402

pytestmark = pytest.mark.gpu


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(autouse=True)
def _no_tf32():
    """cuDNN convolutions (the patch embedding) default to TF32, ~1e-3 off float32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("family", ["cogvideox", "wan2.1"])
def test_transformed_model_on_cuda_matches_cpu(family):
    cfg = TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16, gate_init=0.5)
    results, weights = {}, None
    for device in ("cpu", "cuda"):
        model = build_tiny(family).to(device)
        inputs = example_inputs(model, 5, text_tokens=8)
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else
                  tuple(t.to(device) for t in v) if isinstance(v, tuple) else v for k, v in inputs.items()}
        tm = transform(copy.deepcopy(model), cfg, inputs, progress=False).train()
        # The new layers are initialised from each device's own random stream: give both the same.
        if weights is None:
            weights = {k: v.detach().clone() for k, v in tm.state_dict().items()}
        else:
            tm.load_state_dict({k: v.to(device) for k, v in weights.items()})
        out = tm(**inputs, return_dict=False)[0]
        out.square().mean().backward()
        grads = {n: p.grad.cpu() for n, p in tm.named_parameters() if ".gated_ttt." in n}
        results[device] = (out.detach().cpu(), grads, plan_of(tm).backends)
    (out_cpu, g_cpu, _), (out_gpu, g_gpu, chosen) = results["cpu"], results["cuda"]
    print(family, "backends on cuda:", chosen)
    assert _rel(out_gpu, out_cpu) < 1e-4
    for name, g in g_cpu.items():
        assert torch.isfinite(g_gpu[name]).all(), name
        if g.abs().max() == 0:  # the last block's text gates: its text output is discarded
            assert g_gpu[name].abs().max() == 0, name
        else:
            assert _rel(g_gpu[name], g) < 1e-3, (name, _rel(g_gpu[name], g))


def _head_dim_64_cogvideox(device, dtype):
    """A tiny CogVideoX with the head shape the Hopper kernel takes (D = 64, F = 4 * 64)."""
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.models.tiny import FAMILIES

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CogVideoXTransformer3DModel(**{**FAMILIES["cogvideox"].config, "attention_head_dim": 64})
    model._tttgraph_family = "cogvideox"
    return model.to(device, dtype).eval()


def _on(value, device, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, tuple):
        return tuple(_on(v, device, dtype) for v in value)
    return value


@pytest.mark.parametrize("backend", ["triton", "cuda_sm90"])
def test_in_place_blocks_compile_fullgraph_with_inductor_on_cuda(backend):
    """The edited model's blocks under Inductor, at two frame counts: the TorchFunctionMode of the
    segment attention and the ttt_mlp custom op trace into one graph, forward and backward."""
    if backend == "cuda_sm90" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Hopper kernel needs an sm_90 GPU")
    dtype = torch.bfloat16
    model = _head_dim_64_cogvideox("cuda", dtype)
    inputs = {k: _on(v, "cuda", dtype) for k, v in example_inputs(model, 5, text_tokens=8).items()}
    cfg = TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=64, gate_init=0.5,
                    backend=backend)
    tm = transform(model, cfg, inputs, progress=False).train()  # checks itself against the graph form
    assert set(plan_of(tm).backends.values()) == {backend}
    torch._dynamo.reset()
    for block in tm.transformer_blocks:
        params = [p for p in block.parameters() if p.requires_grad]
        compiled = torch.compile(block, fullgraph=True)
        for frames in (5, 9):
            segments = max(1, -(-(frames - 1) // 2))
            g = torch.Generator("cuda").manual_seed(frames)
            rope = _on(example_inputs(model, frames, text_tokens=8)["image_rotary_emb"], "cuda", dtype)
            video = torch.randn(1, frames * 16, 128, device="cuda", dtype=dtype, generator=g, requires_grad=True)
            text = torch.randn(1, 4 * segments, 128, device="cuda", dtype=dtype, generator=g, requires_grad=True)
            temb = torch.randn(1, 16, device="cuda", dtype=dtype, generator=g)
            results = []
            for fn in (block, compiled):
                out = fn(video, text, temb, image_rotary_emb=rope)
                grads = torch.autograd.grad(sum(o.float().square().mean() for o in out), [video, text, *params])
                results.append((out, grads))
            (eager, eager_grads), (got, got_grads) = results
            for a, b in zip(got, eager, strict=True):
                assert _rel(a, b) < 2e-2, (backend, frames)
            for a, b in zip(got_grads, eager_grads, strict=True):
                if b.abs().max() > 0:
                    assert _rel(a, b) < 5e-2, (backend, frames)

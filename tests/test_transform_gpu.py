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

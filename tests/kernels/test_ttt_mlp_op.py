"""The custom op's contract: opcheck, one node under torch.export / torch.compile, clear errors."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.ttt_loop import random_inputs
from tttgraph.errors import BackendUnavailableError, TTTGraphError
from tttgraph.kernels.ttt_mlp import TTTBackend, backends, explain
from tttgraph.ops import ttt_mlp


class _Scan(torch.nn.Module):
    def forward(self, q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2):
        return ttt_mlp(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size=16)


@pytest.mark.parametrize("save_state", [False, True])
def test_opcheck(save_state):
    args = [a.requires_grad_(True) for a in random_inputs(2, 3, 37, 8, 16, seed=3)]
    torch.library.opcheck(torch.ops.tttgraph.ttt_mlp.default, (*args, 16, 1e-6, "reference", 2, save_state))


def test_torch_export_sees_one_node_and_runs_dynamic_length():
    args = random_inputs(1, 2, 40, 8, 16, seed=1)
    seq = torch.export.Dim("seq", min=2, max=4096)
    dynamic = ({2: seq}, {2: seq}, {2: seq}, {2: seq}, None, None, None, None, None, None)
    with torch.no_grad():
        ep = torch.export.export(_Scan(), tuple(args), dynamic_shapes=dynamic)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.tttgraph.ttt_mlp.default) == 1
    assert all(t is torch.ops.tttgraph.ttt_mlp.default or t.__name__ == "getitem" for t in targets)
    longer = random_inputs(1, 2, 77, 8, 16, seed=2)
    torch.testing.assert_close(ep.module()(*longer), ttt_mlp(*longer, mini_batch_size=16), rtol=0, atol=0)


def test_torch_compile_fullgraph_forward_and_backward():
    args = [a.requires_grad_(True) for a in random_inputs(1, 2, 33, 8, 16, seed=6)]
    compiled = torch.compile(_Scan(), fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    grads = torch.autograd.grad(out.sum(), args)
    eager = _Scan()(*args)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    for g, e in zip(grads, torch.autograd.grad(eager.sum(), args), strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_inference_saves_no_state():
    args = random_inputs(1, 1, 70, 8, 16)
    op = torch.ops.tttgraph.ttt_mlp.default
    out, *states = op(*args, 16, 1e-6, "reference", 2, False)
    assert all(s.shape[2] == 0 for s in states)
    out2, *states2 = op(*args, 16, 1e-6, "reference", 2, True)
    assert [s.shape[2] for s in states2] == [3] * 4  # ceil(ceil(70/16) / 2)
    assert torch.equal(out, out2)


def _bad(index, value):
    args = list(random_inputs(2, 3, 20, 8, 16))
    args[index] = value
    return args


@pytest.mark.parametrize(
    "args, match",
    [
        (_bad(0, torch.randn(3, 20, 8)), r"q must be \[B, H, T, D\] \(4 dims\), got shape \(3, 20, 8\)"),
        (_bad(1, torch.randn(2, 3, 21, 8)), r"k must be \[B, H, T, D\] = \[2x3x20x8\].*got shape \(2, 3, 21, 8\)"),
        (_bad(3, torch.randn(2, 3, 20, 1)), r"eta must be \[B, H, T\]"),
        (_bad(4, torch.randn(3, 9)), r"ln_weight must be \[H, D\] = \[3x8\]"),
        (_bad(7, torch.randn(3, 15)), r"b1 must be \[H, F\] = \[3x16\]"),
        (_bad(8, torch.randn(3, 8, 16)), r"w2 must be \[H, F, D\] = \[3x16x8\]"),
        (_bad(2, torch.randn(2, 3, 20, 8, dtype=torch.float64)), r"share a dtype; q is torch.float32 but v"),
        (_bad(5, torch.zeros(3, 8, dtype=torch.long)), r"ln_bias must be a floating-point tensor"),
        (_bad(6, torch.randn(3, 8, 16, device="meta")), r"w1 is on meta"),
    ],
    ids=["q-rank", "k-len", "eta-shape", "ln-weight", "b1", "w2", "dtype", "int-dtype", "device"],
)
def test_bad_inputs_raise_clear_errors(args, match):
    with pytest.raises(TTTGraphError, match=match):
        ttt_mlp(*args)


@pytest.mark.parametrize("kwargs, match", [
    ({"mini_batch_size": 0}, "mini_batch_size must be an int >= 1, got 0"),
    ({"checkpoint_every": 0}, "checkpoint_every must be an int >= 1, got 0"),
    ({"eps": 0.0}, "eps must be > 0"),
    ({"backend": "cuda"}, r"backend='cuda' is not a ttt_mlp backend; choose one of 'auto', 'reference'"),
])
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(TTTGraphError, match=match):
        ttt_mlp(*random_inputs(1, 1, 8, 8, 16), **kwargs)


def test_unavailable_backend_says_why():
    args = random_inputs(1, 1, 8, 8, 16)
    with pytest.raises(BackendUnavailableError, match=r"backend='cuda_sm90' can't run these inputs: .+backend='auto'"):
        ttt_mlp(*args, backend="cuda_sm90")


def test_auto_uses_reference_on_cpu_and_explains_the_others():
    args = random_inputs(1, 1, 8, 8, 16)
    assert backends.resolve("auto", args, 16, 1e-6).__name__.endswith(".reference")
    reasons = explain(args, 16)
    assert reasons["reference"] == "ok"
    assert set(reasons) == {b.value for b in TTTBackend if b is not TTTBackend.AUTO}
    assert all(r == "ok" or len(r) > 10 for r in reasons.values())


def test_auto_backward_skips_backends_that_opt_out(monkeypatch):
    """A backend whose auto_backward_reason objects runs forward only under auto."""
    import types

    fake = types.SimpleNamespace(__name__="tttgraph.kernels.ttt_mlp.fake", unsupported_reason=lambda *a: None,
                                 auto_backward_reason=lambda q, *a: "slower" if q.dtype == torch.float32 else None)
    real_load = backends._load

    def load(backend):
        return (fake, None) if backend is TTTBackend.TRITON else real_load(backend)

    monkeypatch.setattr(backends, "_load", load)
    args = random_inputs(1, 1, 8, 8, 16, device="meta")  # not CPU: auto considers GPU backends
    assert backends.resolve("auto", args, 16, 1e-6) is fake
    assert backends.resolve("auto", args, 16, 1e-6, backward=True).__name__.endswith(".reference")
    assert backends.resolve("triton", args, 16, 1e-6, backward=True) is fake  # asked by name: runs
    half = (args[0].bfloat16(), args[1].bfloat16(), args[2].bfloat16(), *args[3:])
    assert backends.resolve("auto", half, 16, 1e-6, backward=True) is fake

"""A backend module must implement backends.Backend; one that does not is reported, not run."""

from __future__ import annotations

import sys
import types

import torch

from tttgraph.kernels.ttt_mlp import backends
from tttgraph.kernels.ttt_mlp.backends import TTTBackend


def _args():
    q = torch.randn(1, 2, 8, 4)
    return (q, q, q, torch.rand(1, 2, 8), torch.ones(2, 4), torch.zeros(2, 4), torch.randn(2, 4, 16),
            torch.zeros(2, 16), torch.randn(2, 16, 4), torch.zeros(2, 4))


def test_a_backend_module_lacking_the_interface_is_unavailable_with_the_reason(monkeypatch):
    fake = types.ModuleType("tttgraph.kernels.ttt_mlp.triton")
    fake.unsupported_reason = lambda *a: None
    fake.forward = lambda *a: None  # no backward
    monkeypatch.setitem(sys.modules, "tttgraph.kernels.ttt_mlp.triton", fake)
    reason = backends.unavailable_reason(TTTBackend.TRITON, _args(), 4, 1e-6)
    assert reason == "the triton backend module lacks backward (see backends.Backend)"
    assert backends.explain(_args(), 4)["reference"] == "ok"


def test_every_shipped_backend_implements_the_interface():
    import importlib

    for backend in TTTBackend:
        if backend is TTTBackend.AUTO:
            continue
        module = importlib.import_module(f"tttgraph.kernels.ttt_mlp.{backend.value}")
        assert all(callable(getattr(module, name, None)) for name in backends._REQUIRED), backend

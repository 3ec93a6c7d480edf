"""Example inputs as JSON: shapes and dtypes of tensors, values of constants (recipes record them)."""

from __future__ import annotations

from typing import Any

import torch

from tttgraph.errors import TTTGraphError

__all__ = ["build_inputs", "input_spec"]


def input_spec(value: Any) -> Any:
    """JSON description of a (nested) example input, enough to rebuild one of the same shapes."""
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, (tuple, list)):
        return {"tuple" if isinstance(value, tuple) else "list": [input_spec(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): input_spec(v) for k, v in value.items()}}
    raise TTTGraphError(f"example input of type {type(value).__name__} can't be recorded in a recipe")


def build_inputs(spec: Any, device: torch.device | str = "cpu", seed: int = 0, *,
                 error: type[TTTGraphError] = TTTGraphError) -> Any:
    """Inverse of :func:`input_spec`: random floats, ones for integer and bool tensors."""
    gen = torch.Generator().manual_seed(seed)

    def build(s):
        if not isinstance(s, dict) or len(s) not in (1, 2):
            raise error(f"malformed example-input entry in the recipe: {s!r}")
        if "tensor" in s:
            dtype = getattr(torch, str(s.get("dtype")), None)
            if not isinstance(dtype, torch.dtype) or not all(isinstance(n, int) and n >= 0 for n in s["tensor"]):
                raise error(f"malformed tensor entry in the recipe: {s!r}")
            if dtype.is_floating_point:
                return torch.randn(s["tensor"], generator=gen).to(device=device, dtype=dtype)
            return torch.ones(s["tensor"], dtype=dtype, device=device)
        if "value" in s:
            return s["value"]
        if "tuple" in s or "list" in s:
            items = [build(v) for v in s.get("tuple", s.get("list"))]
            return tuple(items) if "tuple" in s else items
        if "dict" in s:
            return {k: build(v) for k, v in s["dict"].items()}
        raise error(f"malformed example-input entry in the recipe: {s!r}")

    return build(spec)

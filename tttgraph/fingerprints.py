"""Cheap identities of a model's tensor values, to tell whether a base model is the one a save was made on.

:func:`transform` records :func:`state_dict_fingerprints` of the base model in its plan; ``save`` writes
them to the recipe (and saves the pretrained tensors whose fingerprint changed since), and ``restore``
compares them with the fresh base model's. A fingerprint is not an integrity check: the saved tensors
carry a full SHA-256 for that.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["state_dict_fingerprints", "tensor_fingerprint"]

_SAMPLES = 4096


def tensor_fingerprint(t: torch.Tensor) -> str | None:
    """A cheap identity of a tensor's value: SHA-256 of its shape, dtype and an even sample of
    up to 4096 elements. None for meta tensors (no data). Not a cryptographic integrity check."""
    if t.device.type == "meta":
        return None
    flat = t.detach().reshape(-1)
    if flat.numel() > _SAMPLES:
        # float32 linspace rounds the last index up past the end once numel - 1 > 2**24 (a 37.7M-element
        # CogVideoX-5B weight hit it); clamping keeps every fingerprint that was valid before unchanged,
        # so directories saved earlier still restore.
        idx = torch.linspace(0, flat.numel() - 1, _SAMPLES, device=flat.device).long()
        flat = flat[idx.clamp_(max=flat.numel() - 1)]
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_dict_fingerprints(model: nn.Module) -> dict[str, str | None]:
    """:func:`tensor_fingerprint` of every entry of ``model.state_dict()``, by name."""
    return {name: tensor_fingerprint(t) for name, t in model.state_dict().items()}

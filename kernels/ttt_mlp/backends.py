"""Backend registry of ``tttgraph::ttt_mlp``: which implementation runs, and why the others don't.

A backend is a module in this package named after its :class:`TTTBackend` value that implements
:class:`Backend` (the signatures of :mod:`tttgraph.kernels.ttt_mlp.reference`). Modules are
imported lazily, so ``import tttgraph`` never imports Triton or builds CUDA code; a module that
lacks part of the interface is reported as unavailable, naming what it lacks.
"""

from __future__ import annotations

import enum
import importlib
import logging
from types import ModuleType
from typing import Protocol

from tttgraph.errors import BackendUnavailableError

logger = logging.getLogger("tttgraph.kernels")


class TTTBackend(str, enum.Enum):
    """Implementations of ``tttgraph::ttt_mlp``.

    AUTO: the fastest backend that supports the inputs, in the order CUDA_SM90, TRITON, REFERENCE.
    REFERENCE: PyTorch, float32 math on any device; the ground truth, and what CI checks numerics with.
    TRITON: portable GPU kernels (CPU only under ``TRITON_INTERPRET=1``, for tests).
    CUDA_SM90: the on-chip tensor-parallel Hopper kernel (sm_90a).
    """

    AUTO = "auto"
    REFERENCE = "reference"
    TRITON = "triton"
    CUDA_SM90 = "cuda_sm90"


class Backend(Protocol):
    """What a backend module provides (module-level functions; shapes in ``reference.py``).

    ``unsupported_reason(q, k, v, eta, ln_weight, ln_bias, w1, b1, w2, b2, mini_batch_size, eps)``:
    None if the inputs can run here, else one readable sentence.
    ``forward(..., mini_batch_size, eps, checkpoint_every, save_state) -> (out, states)``.
    ``backward(grad_out, ..., states, mini_batch_size, eps, checkpoint_every) -> ten gradients``.
    Optional: ``auto_backward_reason(q, ...)``, why ``auto`` should take another backend's backward.
    """

    def unsupported_reason(self, *args) -> str | None: ...

    def forward(self, *args): ...

    def backward(self, *args): ...


_REQUIRED = ("unsupported_reason", "forward", "backward")

# Preference order for AUTO: fastest first.
_AUTO_ORDER = (TTTBackend.CUDA_SM90, TTTBackend.TRITON, TTTBackend.REFERENCE)


def parse_backend(name: str | TTTBackend) -> TTTBackend:
    try:
        return TTTBackend(name)
    except ValueError:
        choices = ", ".join(repr(b.value) for b in TTTBackend)
        raise BackendUnavailableError(f"backend={name!r} is not a ttt_mlp backend; choose one of {choices}") from None


def _load(backend: TTTBackend) -> tuple[ModuleType | None, str | None]:
    """Import a backend module, or say why it can't be imported."""
    try:
        module = importlib.import_module(f"tttgraph.kernels.ttt_mlp.{backend.value}")
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("tttgraph.kernels.ttt_mlp"):
            return None, f"the {backend.value} backend is not implemented in this version of tttgraph"
        return None, f"the {backend.value} backend needs the package {err.name!r}, which is not installed"
    except ImportError as err:  # a backend module that raises ImportError for a missing build or tool
        return None, str(err)
    except Exception as err:  # a broken backend must not take the others down with it
        return None, f"the {backend.value} backend failed to import: {type(err).__name__}: {err}"
    missing = [name for name in _REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        return None, f"the {backend.value} backend module lacks {', '.join(missing)} (see backends.Backend)"
    return module, None


def unavailable_reason(backend: TTTBackend, args: tuple, mini_batch_size: int, eps: float) -> str | None:
    """None if ``backend`` can run these op inputs here, else why not (one readable sentence)."""
    module, reason = _load(backend)
    if module is None:
        return reason
    return module.unsupported_reason(*args, mini_batch_size, eps)


def resolve(
    name: str | TTTBackend, args: tuple, mini_batch_size: int, eps: float, backward: bool = False
) -> ModuleType:
    """The backend module to run; for AUTO the first that supports the inputs (logging why others didn't).

    With ``backward=True`` (the op's backward), AUTO also skips a backend whose module's
    ``auto_backward_reason(*args)`` gives a reason (its backward is slower than another's, or not
    accurate enough yet, for these inputs). Raises BackendUnavailableError when an explicitly
    requested backend can't run these inputs.
    """
    backend = parse_backend(name)
    if backend is not TTTBackend.AUTO:
        reason = unavailable_reason(backend, args, mini_batch_size, eps)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend={backend.value!r} can't run these inputs: {reason}. "
                "Use backend='auto' to fall back to a backend that can, or backend='reference'."
            )
        return _load(backend)[0]
    on_cpu = args[0].device.type == "cpu"
    for candidate in _AUTO_ORDER:
        if on_cpu and candidate is not TTTBackend.REFERENCE:
            # GPU kernels may run on the CPU under the Triton interpreter, but only when asked for
            # by name (tests): it is orders of magnitude slower than the reference there.
            continue
        reason = unavailable_reason(candidate, args, mini_batch_size, eps)
        auto_backward = getattr(_load(candidate)[0], "auto_backward_reason", None)
        if reason is None and backward and auto_backward is not None:
            reason = auto_backward(*args)
        if reason is None:
            return _load(candidate)[0]
        logger.debug("ttt_mlp: backend %s skipped: %s", candidate.value, reason)
    raise AssertionError("the reference backend always applies")


def explain(args: tuple, mini_batch_size: int = 64, eps: float = 1e-6) -> dict[str, str]:
    """For each concrete backend, 'ok' or why it can't run these inputs (for logs and inspect output)."""
    return {
        b.value: unavailable_reason(b, args, mini_batch_size, eps) or "ok"
        for b in TTTBackend
        if b is not TTTBackend.AUTO
    }

"""Error types raised by tttgraph.

Every user-facing failure raises a subclass of :class:`TTTGraphError` (itself a ``ValueError``,
so ``except ValueError`` keeps working) whose message names the bad value and the fix.
"""

from __future__ import annotations


class TTTGraphError(ValueError):
    """Base class of every error tttgraph raises on bad input or an unsupported model."""


class DamagedFileError(TTTGraphError):
    """A file tttgraph reads is missing, empty, truncated, of the wrong type or not in its format
    (raised by :mod:`tttgraph.safe_read` where the reader has no error type of its own)."""


class BackendUnavailableError(TTTGraphError):
    """A requested kernel backend cannot run these inputs on this machine."""


class CaptureError(TTTGraphError):
    """torch.export could not capture the model as asked (e.g. a dynamic frame count it bakes in)."""


class InputMismatchError(TTTGraphError):
    """A captured model was called with inputs that its graph cannot take; re-capture to fix."""


class NoAttentionFoundError(TTTGraphError):
    """The captured graph holds no attention the analysis recognises."""


class LayoutInferenceError(TTTGraphError):
    """The text/video token layout of a model could not be determined; register an adapter."""


class PassContractError(TTTGraphError):
    """A graph pass was given a graph that breaks its ``requires``, or broke its own ``ensures``."""

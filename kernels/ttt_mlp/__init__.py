"""The TTT-MLP scan op ``tttgraph::ttt_mlp``: backends, registration and derivation (README.md)."""

from .backends import TTTBackend, explain

__all__ = ["TTTBackend", "explain"]

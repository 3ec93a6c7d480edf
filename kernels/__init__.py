"""Kernels of tttgraph, one folder per op (installed as ``tttgraph.kernels``).

Each op folder holds ``reference.py`` (PyTorch ground truth), one module per fast backend, the op
registration, and a README with the derivation.
"""

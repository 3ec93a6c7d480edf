"""Kernels of tttgraph, one folder per op under the repository's top-level ``kernels/``.

Each op folder (``kernels/<op>/``) is installed as ``tttgraph.kernels.<op>`` by a ``package-dir``
entry in pyproject.toml, and holds ``reference.py`` (PyTorch ground truth), one module per fast
backend, the op registration and a README with the derivation. The top-level ``kernels/`` folder is
deliberately not a Python package: a ``kernels/__init__.py`` would shadow the PyPI distribution
``kernels`` (which transformers imports) whenever the repository root is on ``sys.path``.
"""

"""`import tttgraph` stays light: no optional integration imported, CUDA untouched."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["diffusers", "transformers", "triton", "onnx", "onnxruntime", "onnxscript", "tensorrt", "torch_tensorrt"]


def test_import_loads_no_optional_integration_and_no_cuda():
    code = (
        "import json, sys, torch\n"
        "import tttgraph, tttgraph.ops, tttgraph.kernels.ttt_mlp, tttgraph.passes, tttgraph.rewrite\n"
        f"print(json.dumps({{'mods': [m for m in {HEAVY!r} if m in sys.modules],"
        " 'cuda': torch.cuda.is_initialized()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"mods": [], "cuda": False}


def test_op_is_registered_on_import():
    code = "import torch, tttgraph; print(torch.ops.tttgraph.ttt_mlp.default.name())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "tttgraph::ttt_mlp"

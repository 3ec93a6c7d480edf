#!/usr/bin/env bash
# Train the world base model on one GPU in one call, keeping what comes back small (weights 5 MB,
# report, metrics): bash benchmarks/train_world_gpu.sh OUT [MINUTES]
set -euo pipefail
out=${1:?usage: train_world_gpu.sh OUT [MINUTES]}
minutes=${2:-7}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONUNBUFFERED=1 python3 -m tttgraph train-world --out "$out/run" --minutes "$minutes" --steps 100000 \
    --eval-stories 100 --no-progress 2>&1 | tee "$out/train.log"
mkdir -p "$out/world_weights"
cp "$out/run/weights/"*.safetensors "$out/world_weights/"
cp "$out/run/report.json" "$out/run/metrics.csv" "$out/"
rm -rf "$out/run"

#!/usr/bin/env bash
# The paper's recipe on the world, end to end on one GPU (issue #21): the base model, the staged
# fine-tune with TTT and its baseline (gates held at 0: segment-local attention only), and the
# held-out results at 18 s and 63 s. Every step resumes when run again (train-world from its
# checkpoint, finetune with --resume, world_results skips finished videos), so the sequence can be
# spread over several sessions: carry runs/ between them.
#
#   bash benchmarks/world_recipe.sh [STORIES]        (default 100 held-out stories per length)
set -euo pipefail
stories=${1:-100}
weights=runs/world_base/weights

[ -f "$weights/transformer.safetensors" ] || tttgraph train-world --out runs/world_base --minutes 9

stage() {  # stage NAME CONFIG: run (or resume) one fine-tuning stage into runs/NAME
    local out="runs/$1"
    if [ -f "$out/ttt/tttgraph_recipe.json" ]; then return; fi
    local resume=()
    [ -d "$out/checkpoints" ] && resume=(--resume)
    tttgraph finetune --config "$2" --pretrained "$weights" --out "$out" "${resume[@]}" --no-progress
}
for s in 3 9 18 63; do
    stage "world_${s}s" "examples/configs/world/stage_${s}s.json"
    stage "world_baseline_${s}s" "examples/configs/world/baseline_${s}s.json"
done

for s in 18 63; do
    for run in "world_${s}s" "world_baseline_${s}s"; do
        python benchmarks/world_results.py --world "$weights" --ttt "runs/$run/ttt" --seconds "$s" \
            --stories "$stories" --out "runs/results/$run"
    done
done

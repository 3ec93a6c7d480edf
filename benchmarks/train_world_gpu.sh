#!/usr/bin/env bash
# Train the world base model on one GPU, in one device call or several (the limit is 10 minutes a
# call): each call trains until STOP_AFTER seconds of the call have passed (then SIGTERM: the run
# saves its checkpoint and stops), and the next call, on the same machine, resumes it. The call
# that finishes the MINUTES budget evaluates the weights on held-out clips at several guidance
# scales. What comes back stays small: weights (5 MB), report, metrics, log, sample sheets.
#
#   bash benchmarks/train_world_gpu.sh RUN OUT [MINUTES] [STOP_AFTER] [train-world flags...]
#     RUN: the run's directory (kept on the machine between calls: checkpoint, clip pool); keep it
#          outside every path the device call carries (a carried path replaces what the machine has,
#          which deletes the checkpoint: e.g. /tmp/world_base, not a folder inside a carried tree)
#     OUT: where to copy what comes back ($OUT)
set -uo pipefail
run=${1:?usage: train_world_gpu.sh RUN OUT [MINUTES] [STOP_AFTER]}
out=${2:?usage: train_world_gpu.sh RUN OUT [MINUTES] [STOP_AFTER]}
minutes=${3:-15}
stop_after=${4:-540}
mkdir -p "$run" "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
left=$((stop_after - SECONDS))
PYTHONUNBUFFERED=1 timeout -s TERM "$left" python3 -m tttgraph train-world --out "$run" --minutes "$minutes" \
    --steps 1000000 --eval-stories 100 --no-progress "${@:5}" 2>&1 | tee -a "$run/train.log"
status=${PIPESTATUS[0]}
cp "$run/train.log" "$run/metrics.csv" "$out/" 2>/dev/null
if [ "$status" -eq 124 ]; then
    # the checkpoint in pieces small enough to come back, in case the machine is gone by the next call
    # (cat them into RUN/checkpoint.pt on a new one to resume there)
    split -b 15M -d "$run/checkpoint.pt" "$out/checkpoint.pt.part"
    echo "the call's time ran out; the checkpoint is saved: run this script again to resume"
    exit 0
elif [ "$status" -ne 0 ]; then
    echo "train-world failed with status $status"
    exit "$status"
fi
mkdir -p "$out/world_weights"
cp "$run/weights/"*.safetensors "$out/world_weights/"
cp "$run/report.json" "$run/held_out_samples.png" "$out/"
for g in 3 9; do
    python3 -m tttgraph train-world --out "$run" --evaluate-only --guidance-scale "$g" --eval-stories 100 \
        --no-progress "${@:5}" 2>&1 | tail -1 | tee -a "$out/guidance.txt"
done

#!/usr/bin/env bash
# benchmarks/world_recipe.sh inside device calls of at most 10 minutes: each call runs the recipe
# until STOP_AFTER seconds of the call have passed (then SIGTERM: the stage in progress saves a
# checkpoint and stops), and the next call, on the same machine, goes on from there. What finished since
# the previous call (every stage's OUT/ttt, metrics and loss curve, the results' summaries, four of
# their videos and the comparison sheets, the log) comes back in $OUT as recipe.tgz.part* (15 MB
# pieces; the earlier calls' files are not sent again, to stay under the 64 MB a call returns). A call
# on a fresh machine unpacks the pieces found in FROM first (pack what the next stages need into one
# recipe.tgz there), so the recipe also survives losing the machine (a stage in progress restarts).
#
#   bash benchmarks/world_recipe_gpu.sh RUNS OUT STOP_AFTER [STORIES]
#     RUNS: kept on the machine between calls; outside every carried path (a carried path replaces
#           what the machine has: e.g. /tmp/recipe)
#     env FROM: a carried directory with the earlier calls' results as recipe.tgz or recipe.tgz.part*
#           (read on a fresh machine only)
#     env WEIGHTS, MAX_STEPS, STEPS: as for world_recipe.sh
set -uo pipefail
runs=${1:?usage: world_recipe_gpu.sh RUNS OUT STOP_AFTER [STORIES]}
out=${2:?usage: world_recipe_gpu.sh RUNS OUT STOP_AFTER [STORIES]}
stop_after=${3:?usage: world_recipe_gpu.sh RUNS OUT STOP_AFTER [STORIES]}
mkdir -p "$runs" "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# The results are MP4s: without imageio-ffmpeg the recipe would stop after its first stages' training.
python3 -c "from tttgraph.generate.video_io import require_mp4_writer; require_mp4_writer()" || {
    echo "carry an imageio-ffmpeg wheel to the device (pip download imageio-ffmpeg --no-deps --only-binary=:all:" \
         "--platform manylinux2014_x86_64 -d .whl) and install it with the others"; exit 1; }
if [ -n "${FROM:-}" ] && [ ! -f "$runs/recipe.log" ] && compgen -G "$FROM/recipe.tgz*" >/dev/null; then
    cat "$FROM"/recipe.tgz* | tar -xz -C "$runs" && touch "$runs/.packed" \
        && echo "unpacked the earlier calls' results from $FROM"
fi
left=$((stop_after - SECONDS))
RUNS="$runs" PYTHONUNBUFFERED=1 timeout -s TERM "$left" bash benchmarks/world_recipe.sh "${4:-100}" 2>&1 \
    | tee -a "$runs/recipe_output.log" | grep -v "^  \|Warning\|warn" | tail -40
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "the call's time ran out (SIGTERM); run this script again to go on"
cd "$runs" || exit 1
# what is finished and small, and new since the last pack: no clip data, no training checkpoints
newer=()
[ -f .packed ] && newer=(-newer .packed)
touch .packed.next
find . "${newer[@]}" \( -path "*/ttt/*" -o -name metrics.csv -o -name loss.png -o -name "summary.json" -o -name "*.log" \
    -o -path "./results/sheets/*" -o -path "./results/*/story_0000[0-3].*" -o -path "./world_base/weights/*" \
    -o -name report.json -o -name held_out_samples.png -o -name done \) -type f -print0 | tar -czf "$out/recipe.tgz" --null -T -
mv .packed.next .packed
split -b 15M -d "$out/recipe.tgz" "$out/recipe.tgz.part" && rm "$out/recipe.tgz"
ls -la "$out"
exit 0

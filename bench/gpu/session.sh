#!/usr/bin/env bash
# The GPU checks and benchmarks of issues 2, 3 and 5 as one prepared session on a lent GPU (H100 / H200), sized to
# fit one command of about ten minutes:
#   1. bench/bench_fit.py on CUDA: 1M filters x 50 keys (two chunk sizes) and 10M filters once (bounded memory);
#   2. bench/bench_train.py on CUDA: plain eager loop vs masterkey train, trainable vs frozen keys, side by side;
#   3. then, at the same time on the same GPU:
#      a. the CIFAR-10 benchmark (bench/train_cifar_gpu.toml: trainable / frozen paper8 / frozen discovered /
#         frozen random x seeds 0,1,2, batch 512), four runs at once (--jobs 4), with 20 epochs when the
#         throughput measured in step 2 lets all twelve runs finish in the time left, else as many as fit
#         (the session log and the runs' configs say which);
#      b. `masterkey discover --objective accuracy`, 50 -> 8 keys on a 5,000-image held-out split of CIFAR-10
#         train (its time is an upper bound: it shares the GPU with the training runs);
#      c. the CUDA tests (tests that skip without a GPU).
# Results: $OUT/session.log and $OUT/results.tar.gz (summaries, metrics, figures, logs; no checkpoints).
#
#   bash bench/gpu/prepare.sh          # here: .carry/ with CIFAR-10 and one CIFAR-10 ConvNeXt
#   bash bench/gpu/session.sh          # there (carry .carry); BUDGET=seconds (default 570), SMOKE=1 for a tiny
#                                      # CPU rehearsal of the whole script
# Knobs (environment): PARTS="fit speed matrix discover tests" (the steps to run), EPOCHS=N (instead of the
# epochs that fit), ARMS=a,b (default: the four arms), SEEDS=0,1,2. The 20-epoch matrix needs about 11 minutes
# of H200 time, more than one call: run it as two calls, e.g.
#   PARTS="speed matrix" EPOCHS=20 ARMS=trainable,frozen-paper8 bash bench/gpu/session.sh
#   PARTS=matrix EPOCHS=20 ARMS=frozen-discovered,frozen-random bash bench/gpu/session.sh
# and join the two experiments here: masterkey train --collect DIR1 DIR2 -o runs/train-cifar-gpu-20ep
set -u
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/masterkey-gpu-out}
BUDGET=${BUDGET:-570}
SMOKE=${SMOKE:-0}
PARTS=${PARTS:-fit speed matrix discover tests}
ARMS=${ARMS:-trainable,frozen-paper8,frozen-discovered,frozen-random}
want() { [[ " $PARTS " == *" $1 "* ]]; }
W=${WORK:-/tmp/masterkey-gpu}
START=$SECONDS
mkdir -p "$OUT" "$W/results"
exec > >(tee -a "$OUT/session.log") 2>&1

left() { echo $((BUDGET - (SECONDS - START))); }
phase() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
pack() {
    tar -C "$W/results" --exclude='*.pt' --exclude='model.safetensors' -czf "$OUT/results.tar.gz.tmp" . 2>/dev/null &&
        mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}
trap 'pack; kill $(jobs -p) 2>/dev/null' EXIT

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu FIT_N=20000 TRAIN_STEPS="--steps 2 --warmup 1 --rounds 1 --pairs 2 --batch-size 16 --patch-size 2"
    SEEDS=${SEEDS:-0,1} JOBS=2 MAX="--max-train-images 100 --max-test-images 50 --batch-size 20 --threads 1"
    DISCOVER="--held-out 100 --max-per-class 20 --candidates 10"
else
    DEVICE=cuda FIT_N=1000000 TRAIN_STEPS="--steps 20 --warmup 5 --rounds 2 --pairs 30 --batch-size 512 --patch-size 1"
    SEEDS=${SEEDS:-0,1,2} JOBS=4 MAX="--threads 2" DISCOVER="--held-out 5000 --candidates 50"
fi

phase "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true
$PY -c "import torch, timm, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'timm',
timm.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
nproc

phase "data"
mkdir -p "$W/shared/models/cifar10-convnext" "$W/shared/data"
$PY -c "import tarfile; tarfile.open('.carry/cifar10.tar.xz').extractall('$W/shared/data', filter='data')"
cp .carry/convnext_atto_s0_e20.safetensors "$W/shared/models/cifar10-convnext/"
export MASTERKEY_SHARED=$W/shared MASTERKEY_CACHE=$W/cache
DATA=$W/shared/data/cifar10
find "$DATA" -name '*.jpg' | wc -l
# Decode once into the image cache, so that the first four training runs do not all decode the same JPEGs.
$PY -c "from masterkey.data.training import load_train_data as load; d = load('$DATA'); print(d.train.images.shape)"

if want fit; then
    phase "1. exact affine fit on $DEVICE"
    for chunk in 8192 65536; do
        timeout 60 $PY bench/bench_fit.py --device $DEVICE --n $FIT_N --repeats 5 --naive 50 --chunk-size $chunk |
            tee "$W/results/bench_fit_${DEVICE}_chunk$chunk.txt"
    done
    timeout 90 $PY bench/bench_fit.py --device $DEVICE --n $((FIT_N * 10)) --repeats 1 --naive 10 \
        --chunk-size 65536 | tee "$W/results/bench_fit_${DEVICE}_10x.txt"
    pack
fi

if want speed; then
    phase "2. training speed on $DEVICE"
    timeout 150 $PY bench/bench_train.py --device $DEVICE --data "$DATA" $TRAIN_STEPS \
        -o "$W/results/bench_train_$DEVICE.json" | tee "$W/results/bench_train_$DEVICE.md"
    pack
fi

phase "3. CIFAR-10 benchmark, accuracy objective and CUDA tests, side by side ($(left) s left)"
# Epochs: 20 if the twelve runs fit in the time left at the single-run throughput of step 2 (four runs at once
# and the discovery beside them are assumed to cancel out), else as many as fit; 45 s kept for the summaries.
EPOCHS=${EPOCHS:-$($PY - "$W/results/bench_train_$DEVICE.json" "$(left)" "$SMOKE" "$ARMS" "$SEEDS" <<'EOF'
import json, sys
try:
    speed = json.load(open(sys.argv[1]))["images_per_second"]["masterkey train, trainable"]
except Exception:
    speed = 0.0
left, smoke = float(sys.argv[2]), sys.argv[3] == "1"
runs = len(sys.argv[4].split(",")) * len(sys.argv[5].split(","))
per_epoch = runs * (50_000 + 10_000 / 3)  # evaluation costs about a third of a training image
# 45 s for the summaries, 3 waves x 10 s of start-up; 0.8: a lost seed costs more than a lost epoch.
print(1 if smoke else max(1, min(20, int(0.8 * (left - 45 - 30) * speed / per_epoch))))
EOF
)}
TRAIN=
if want matrix; then
    echo "training: $EPOCHS epochs per run, arms $ARMS, seeds $SEEDS"
    timeout $(($(left) - 20)) $PY -m masterkey train --experiment bench/train_cifar_gpu.toml --arms "$ARMS" \
        --seeds $SEEDS --data "$DATA" --epochs "$EPOCHS" --device $DEVICE --jobs $JOBS $MAX --no-progress --json \
        -o "$W/results/train-cifar-gpu" > "$W/results/train-cifar-gpu.json" 2> "$W/results/train-cifar-gpu.log" &
    TRAIN=$!
fi
DISCOVER_JOB=
want discover && (
    start=$SECONDS
    timeout $(($(left) - 20)) $PY -m masterkey discover --kernel-size 7 -k 8 --objective accuracy \
        --weights "$W/shared/models/cifar10-convnext/convnext_atto_s0_e20.safetensors" --data "$DATA/train" \
        $DISCOVER --rounds 1 --batch-size 1000 --device $DEVICE --threads 4 --no-progress \
        -o "$W/results/discover-accuracy-gpu" > "$W/results/discover-accuracy-gpu.log" 2>&1
    echo "discover exit $? after $((SECONDS - start)) s wall (beside the training runs)" |
        tee -a "$W/results/discover-accuracy-gpu.log"
) &
want discover && DISCOVER_JOB=$!
if want tests && [ "$DEVICE" = cuda ]; then
    timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_fit.py tests/train/test_loop.py -k cuda \
        > "$W/results/cuda_tests.log" 2>&1
    echo "cuda tests exit $? ($(tail -n 1 "$W/results/cuda_tests.log"))"
fi
running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
while running "$TRAIN" || running "$DISCOVER_JOB"; do
    sleep 30
    pack
    echo "[$((SECONDS - START)) s] $(grep -c '^\[.*epoch' "$W/results/train-cifar-gpu.log" 2>/dev/null) epochs done;" \
        "$(tail -n 1 "$W/results/discover-accuracy-gpu.log" 2>/dev/null | cut -c1-150)"
done
if [ -n "$TRAIN" ]; then wait $TRAIN; echo "train exit $?"; fi
if [ -n "$DISCOVER_JOB" ]; then wait $DISCOVER_JOB; fi
phase "done"
tail -n 3 "$W/results/discover-accuracy-gpu.log" 2>/dev/null
cat "$W/results/train-cifar-gpu/summary.md" 2>/dev/null || tail -n 5 "$W/results/train-cifar-gpu.log"
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv 2>/dev/null || true

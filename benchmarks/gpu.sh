#!/usr/bin/env bash
# One command on one GPU: the three reproductions at full scale, then the speed benchmarks, each writing its
# JSON under OUT as it goes (the reproductions are resumable: run it again to continue).
#
#   pip install --no-deps -e . && benchmarks/gpu.sh [OUT]
#
# Data: real MNIST, CIFAR-10 and CIFAR-100 laid out from ../shared (or $DK_DATA if it already holds them).
# SCALE (default full) and DEVICE (default cuda) are read from the environment: `SCALE=smoke DEVICE=cpu
# benchmarks/gpu.sh /tmp/o` runs every step in minutes on a CPU, to check the script itself. Budget: the
# issue asks for all of it within 10 minutes on one H100/H200; not yet measured on one (no device lent).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu}"
SCALE="${SCALE:-full}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python}"
DATA="${DK_DATA:-$PWD/.cache/data}"
mkdir -p "$OUT"
if [ ! -d "$DATA/cifar-100-python" ]; then
    "$PY" ../shared/tools/datasets.py install "$DATA"
fi
for exp in mnist cifar10 cifar100; do
    start=$(date +%s)
    "$PY" -m darkknowledge reproduce "$exp" --scale "$SCALE" --device "$DEVICE" --data-dir "$DATA" \
        --out "$OUT/$exp-$SCALE" --resume --no-progress
    echo "$exp $SCALE: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/walls.txt"
done
small=()
[ "$SCALE" = smoke ] && small=(--images 1024 --archs resnet-s-w4 airnet-8-16-16)
"$PY" benchmarks/cifar_speed.py --data-dir "$DATA" --device "$DEVICE" --out-dir "$OUT" ${small[@]+"${small[@]}"}
echo "results: $OUT (walls.txt, */results.json, cifar-speed-$DEVICE.json)"

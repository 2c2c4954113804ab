#!/bin/sh
# Issue 17: asapbench's CPU backends against the official ASAP-Net code (tamarott/ASAPNet), timed side by side
# in one process (alternated rounds, the official generator first in each; scripts/compare_official.py).
#
# Run from the repository root on a quiet machine (nothing else running: the ratios are the result), with a
# checkout of the official code next to this repository (or its path as the first argument):
#   git clone https://github.com/tamarott/ASAPNet ../ASAPNet
#   sh results/official-compare/run.sh [PATH-TO-ASAPNet]
# The first run exports the ONNX models into the cache ($ASAPBENCH_CACHE or ~/.cache/asapbench; minutes at
# facades2048). Writes compare.csv / compare.md / compare.json here, in facades512/, facades2048/ and fused/.
set -eu
OFFICIAL=${1:-${ASAPBENCH_OFFICIAL:-../ASAPNet}}
# the targets: cityscapes 256x512 and facades1024 1024x1024, 9 alternated rounds of 1 warm-up + 3 timed runs,
# both low-res conv forms (the default Winograd F(2x2,3x3) and F(4x4,3x3)) against the official module
python scripts/compare_official.py --official "$OFFICIAL" --presets cityscapes,facades1024 --rounds 9 --iters 3 \
    --warmup 1 --threads 2 --backends torch,onnxruntime,openvino --lowres-conv winograd,winograd4 --out results/official-compare
# the other official Facades sizes, fewer rounds (facades2048: the official module takes several seconds a run,
# so only the graph backends there)
python scripts/compare_official.py --official "$OFFICIAL" --presets facades512 --rounds 5 --iters 3 --warmup 1 \
    --threads 2 --backends torch,onnxruntime,openvino --lowres-conv winograd,winograd4 --out results/official-compare/facades512
python scripts/compare_official.py --official "$OFFICIAL" --presets facades2048 --rounds 3 --iters 2 --warmup 1 \
    --threads 2 --backends onnxruntime,openvino --lowres-conv winograd,winograd4 --out results/official-compare/facades2048
# the fused pixelwise kernel (--pixelwise fused, torch only) beside the default formulation and OpenVINO, winograd4
python scripts/compare_official.py --official "$OFFICIAL" --presets cityscapes,facades1024 --rounds 7 --iters 3 \
    --warmup 1 --threads 2 --backends torch,openvino --lowres-conv winograd4 --pixelwise fast,fused \
    --out results/official-compare/fused

#!/bin/sh
# Produces every file in this folder (run from the repository root; nothing else running).
set -e
export PYTHONPATH=.
python results/cpu-profile/bench_pixelwise.py --threads 1 --reps 3 --out results/cpu-profile/pixelwise-t1.json
python results/cpu-profile/bench_pixelwise.py --threads 2 --reps 3 --sizes cityscapes:256x512,facades1024:1024x1024 --out results/cpu-profile/pixelwise-t2.json
for b in torch onnxruntime; do
  python -m asapbench profile --model asapnet --res 256x512 --backend $b --threads 1 --iters 3 --json results/cpu-profile/profile-asapnet-256x512-$b-t1.json
  python -m asapbench profile --model asapnet --res 1024x1024 --backend $b --threads 1 --iters 3 --json results/cpu-profile/profile-asapnet-1024x1024-$b-t1.json
done

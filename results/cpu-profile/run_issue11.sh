#!/bin/sh
# bf16 against fp32 (torch, 1 thread, side by side) and --input labels end-to-end against device-resident
# time (issue 11, items 2 and 3). Run from the repository root with nothing else running.
set -e
export PYTHONPATH=.
d=results/cpu-profile
for p in fp32 bf16; do
  python -m asapbench profile --model asapnet --res 1024x1024 --backend torch --precision $p --threads 1 --iters 3 --json $d/profile-asapnet-1024x1024-torch-$p-t1.json
done
python -m asapbench run -m asapnet -r 256x512 -r 1024x1024 -b torch,onnxruntime -p fp32 --input labels \
  --warmup 1 --iters 5 --min-seconds 5 --e2e-iters 5 --out $d/labels-e2e --no-progress || true

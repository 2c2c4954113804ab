#!/bin/sh
# Produces every file in this folder (run from the repository root with nothing else running), then
# `python results/cpu-profile/summarize.py` prints the tables of README.md.
set -e
export PYTHONPATH=.
D=results/cpu-profile
python $D/bench_pixelwise.py --threads 2 --reps 5 --out $D/pixelwise-t2.json
for r in 256x512 1024x1024 2048x2048; do
  for b in torch onnxruntime; do
    python -m asapbench profile --model asapnet --res $r --backend $b --threads 2 --iters 5 --json $D/profile-asapnet-$r-$b.json
  done
done
# bf16: what `run` times (--cast auto: the mixed variant when the whole cast fails its gate), and the whole cast
python -m asapbench profile --model asapnet --res 1024x1024 --backend torch --precision bf16 --threads 2 --iters 5 --json $D/profile-asapnet-1024x1024-torch-bf16.json
python -m asapbench profile --model asapnet --res 1024x1024 --backend torch --precision bf16 --cast whole --threads 2 --iters 5 --json $D/profile-asapnet-1024x1024-torch-bf16-whole.json
for b in torch onnxruntime; do
  python -m asapbench profile --model asapnet --res 1024x1024 --backend $b --input labels --threads 2 --iters 5 --json $D/profile-asapnet-1024x1024-$b-labels.json
done
# the harness: device-resident and end-to-end times, one-hot and label-map input, fp32 and bf16
for i in onehot labels; do
  python -m asapbench run --models asapnet --res 256x512,1024x1024 --backends torch,onnxruntime --precision fp32,bf16 \
    --input $i --threads 2 --warmup 2 --iters 10 --e2e-iters 10 --no-progress --out $D/run-$i
done
# bf16 vs fp32 at 1024x1024 again, with 15 alternated rounds (the 5-round medians above move by 20-30% between runs)
python $D/bench_pixelwise.py --threads 2 --reps 15 --sizes facades1024:1024x1024 --out $D/pixelwise-t2-facades1024-r15.json

#!/bin/sh
# Issue 17: the OpenVINO backend beside onnxruntime on the CPU, every model at 256x512 and 1024x1024, fp32 and bf16
# (bf16 rows are gated against fp32 torch, or 'unsupported' on a CPU without native bf16). Both read the same gated
# ONNX export. Run from the repository root on a quiet machine; 5 timed runs per cell (SPADE at 1024x1024 takes
# seconds a run) and 2 end-to-end runs. The machine's GEMM peak per library is measured at the start (bench.json).
set -eu
python -m asapbench run --models asapnet,pix2pixhd,spade --res 256x512,1024x1024 --backends onnxruntime,openvino \
    --precision fp32,bf16 --threads 2 --iters 5 --min-seconds 0 --e2e-iters 2 --no-progress --out results/cpu-openvino

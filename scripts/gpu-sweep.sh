#!/usr/bin/env bash
# The GPU sweep of the paper's resolutions, for a machine with an NVIDIA GPU and torch+CUDA.
#
#   bash scripts/gpu-sweep.sh [OUT]        # default OUT: results/<gpu-name>/
#
# Times asapnet, pix2pixhd and spade at 256x512, 512x512, 512x1024, 1024x1024, 1024x2048, 2048x2048 with
# torch fp32 and fp16 (device-resident CUDA-event times and end-to-end times), plus onnxruntime's CUDA
# provider and TensorRT where they are importable and usable. Nothing is installed: run it from a checkout
# where `python -m asapbench` works (PYTHONPATH is set to the checkout). Budget (not yet timed): under 8 minutes on an
# H100/H200-class GPU; a hard limit of 9 minutes keeps whatever rows finished (bench.csv is written after
# every cell; an interrupted set is marked incomplete).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
if [ -z "$gpu" ]; then
  echo "gpu-sweep: torch sees no CUDA GPU (torch $("$PY" -c 'import torch; print(torch.__version__)')); run this on a GPU machine" >&2
  exit 2
fi
slug=$(echo "$gpu" | tr 'A-Z' 'a-z' | sed -E 's/nvidia //; s/[^a-z0-9]+/-/g; s/^-|-$//g')
out=${1:-results/$slug}
backends=$("$PY" - <<'PY'
from asapbench.bench.backends import unsupported_reason
print(",".join(b for b in ("torch", "onnxruntime", "tensorrt") if unsupported_reason(b, "cuda", "fp16") is None))
PY
)
echo "gpu-sweep: $gpu; backends: $backends; out: $out" >&2
mkdir -p "$out"
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
timeout --signal=INT 540 "$PY" -m asapbench run \
  --device cuda \
  --models asapnet,pix2pixhd,spade \
  --res 256x512,512x512,512x1024,1024x1024,1024x2048,2048x2048 \
  --backends "$backends" \
  --precision fp32,fp16 \
  --warmup 5 --warmup-seconds 0.5 --iters 20 --min-seconds 1.0 --e2e-iters 10 \
  --budget 30 \
  --cache-dir "$cache" \
  --out "$out" --no-progress

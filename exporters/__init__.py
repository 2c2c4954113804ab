"""Exporters and runners: ONNX (fp32 / fp16), onnxruntime and TensorRT.

Each backend keeps its exporter and its runner together, Polygraphy-style (loaders apart from
runners):

- :mod:`exporters.onnx_export` -- ``export_onnx``: torch -> ONNX, parity-gated, JSON sidecar, reuse
- :mod:`exporters.fp16` -- fp32 -> fp16 graph conversion with fp32 I/O (unsafe ops stay fp32)
- :mod:`exporters.validate` -- the parity gate (onnxruntime vs. PyTorch fp32)
- :mod:`exporters.ort` -- ``make_session`` (every onnxruntime session, with ``run``'s settings) and ``OrtRunner``
  (CPU / CUDA / TensorRT execution providers)
- :mod:`exporters.node_eval` -- node-by-node onnxruntime evaluation; :mod:`exporters.onnx_types` -- value types
- :mod:`exporters.trt` -- ``build_engine`` (TensorRT 10.x / 11.x and TensorRT-RTX, strongly typed) and
  ``TrtRunner``: the public face of ``trt_probe``, ``trt_build``, ``trt_layers``, ``trt_child`` and ``trt_run``
- :mod:`exporters.cache` -- the engine-cache key and compatibility checks (pure Python)

Importing this package imports none of onnx, onnxruntime, tensorrt or pycuda.
"""

__all__ = ["onnx_export", "fp16", "validate", "ort", "trt", "cache"]

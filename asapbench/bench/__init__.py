"""The timing harness: statistics and timers, backends, environment snapshot and the sweep runner.

- :mod:`asapbench.bench.timing`: warm-up and timed loops (CUDA events on the GPU, ``perf_counter_ns``
  on the CPU), summary statistics, peak-memory probes.
- :mod:`asapbench.bench.backends`: torch / onnxruntime / TensorRT runners behind one interface
  (onnxruntime and TensorRT are imported only when a cell uses them).
- :mod:`asapbench.bench.system`: the environment snapshot stored with every result.
- :mod:`asapbench.bench.sweep`: the model x resolution x backend x precision sweep.
"""

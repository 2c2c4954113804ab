"""The trainer behind :mod:`asapbench.train` (the public face: import from there), one job per module.

- :mod:`.config`: the run's file names and loss columns, :class:`TrainConfig`, its defaults and
  :func:`resolve_config` (fresh run or resume);
- :mod:`.setup`: weight init, the resumable sampler, distributed set-up, seeding and RNG states, and
  the stages that build a run (device, models, data, optimisers, restore from a checkpoint);
- :mod:`.checkpoints`: losses.csv, sample grids, checkpoints, run.json, the run-folder check of a
  resume and SIGINT/SIGTERM;
- :mod:`.step`: one iteration (the generator step, then the discriminator step);
- :mod:`.loop`: the loop, its progress bar, divergence and how a run ends;
- :mod:`.trainer`: opening and locking the run folder and :func:`train`.
"""

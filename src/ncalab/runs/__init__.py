"""Run plumbing: what a training run is on disk and as a process, apart from the NCA it trains.

- :mod:`ncalab.runs.status`: ``status.json``, interruption by signals, the run's exit state;
- :mod:`ncalab.runs.dirs`: fresh run directories and sweep directories (Hydra's ``${ncalab.fresh_dir:...}``);
- :mod:`ncalab.runs.folder`: the run-folder format (file names, last checkpoint, summary and evaluation files);
- :mod:`ncalab.runs.processes`: the kernel's parent-death signal for the processes a run starts;
- :mod:`ncalab.runs.supervision`: the torch threads a run takes, and a DDP rank ending when its run's process dies;
- :mod:`ncalab.runs.allocator`: glibc's allocator setting for training and the bench.
"""

"""Train a Neural Cellular Automaton: python train.py [perception=<name>] [key=value ...] [-m for sweeps]."""

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import ncalab.runs.dirs  # noqa: F401 - registers ${ncalab.fresh_dir:...} (conf/hydra/default.yaml) before Hydra reads it
from ncalab.errors import NCALabError, SweepJobFailed
from ncalab.runs.processes import LAUNCHER_PID_ENV


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from ncalab.runs.status import RunInterrupted, interrupt_signal
    from ncalab.train import run

    try:
        summary = run(cfg)
    except RunInterrupted as exc:
        # Not 0: a scheduler must see that the run did not finish (143 = 128 + SIGTERM, 130 = 128 + SIGINT).
        logging.getLogger("ncalab").error("%s", exc)
        print(f"ncalab: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        # Lightning turns Ctrl+C and SIGTERM into a SystemExit (SIGTERM's without a code, i.e. 0).
        signum = interrupt_signal(exc)
        if signum is not None:
            sys.exit(128 + signum)
        raise
    except NCALabError as exc:
        logging.getLogger("ncalab").error("%s", exc)
        print(f"ncalab: error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Hydra records the failed job, goes on with the others, then prints this (one line, no traceback).
            raise SweepJobFailed(f"ncalab: error: {exc}") from None
        sys.exit(2)
    return summary["objective"]


if __name__ == "__main__":
    # A sweep's worker processes (hydra/launcher=joblib) end with this process, even when it is killed (SIGKILL).
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    main()

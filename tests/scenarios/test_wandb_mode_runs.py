"""W&B's mode in ``auto``: online when wandb itself has credentials (where ``wandb login`` keeps them), offline
without; with credentials but no network (a compute node) a bounded wait, then offline with one message."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import warm
from test_wandb_mode import wandb_host, write_netrc

# Run in a new process (tests/warm.py: wandb is not among the modules it has imported): wandb keeps process-wide
# state, and this one must start from the temporary home.
COMPUTE_NODE = textwrap.dedent(
    """
    import json, logging, sys, time
    import wandb
    from ncalab.loggers import wandb_logger

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("ncalab").addHandler(handler)
    logging.getLogger("ncalab").setLevel(logging.INFO)

    start = time.monotonic()
    logger = wandb_logger(save_dir=sys.argv[1], mode="auto", init_timeout=1)
    run = logger.experiment
    elapsed = time.monotonic() - start
    offline = bool(run.settings._offline)
    wandb.finish()
    print("RESULT " + json.dumps({"elapsed": elapsed, "offline": offline, "messages": records}))
    """
)


def test_with_credentials_but_no_network_auto_mode_goes_offline_quickly(home, tmp_path):
    """This machine cannot reach the W&B server, as on a compute node."""
    write_netrc(home, wandb_host())
    save_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_INIT_TIMEOUT"}
    script = tmp_path / "compute_node.py"
    script.write_text(COMPUTE_NODE)
    result = warm.run([sys.executable, str(script), str(save_dir)], cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["offline"] is True
    assert out["elapsed"] < 30  # not wandb's 90 s default, nor the failure of the run
    fallbacks = [m for m in out["messages"] if "could not be reached" in m]
    assert len(fallbacks) == 1 and "wandb sync" in fallbacks[0]
    assert list((save_dir / "wandb").glob("offline-run-*"))

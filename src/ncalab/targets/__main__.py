"""What ``data.target`` accepts: the built-in targets, the emoji by name, and a preview of any target.

    python -m ncalab.targets list [--all]
    python -m ncalab.targets search <words...> [--limit 20]
    python -m ncalab.targets preview <target> [--out file.png] [--size 24] [--padding 6] [--scale 8]

``list`` names the built-in targets and how many emoji there are (``--all``: every emoji name with its code
point). ``search`` lists the emoji whose name contains every word (``search red heart``), with code point and the
character; each works as ``data.target=emoji:<name>``. ``preview`` writes a PNG of a target exactly as training
sees it (:func:`ncalab.targets.load_target`: fitted into ``--size`` px, padded by ``--padding`` cells), over
white, each cell ``--scale`` x ``--scale`` pixels; the target is a built-in name, an image file or
``emoji:<name or code point>``, and the PNG goes to ``<name>_preview.png`` in the current folder unless ``--out``
says where. An unknown target or a missing emoji package is said in one line, exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ncalab.errors import NCALabError
from ncalab.targets import emoji as emoji_set

PROG = "python -m ncalab.targets"
SEARCH_LIMIT = 20


def _positive(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not valid; expected an integer >= {minimum}")
        return value

    return parse


def list_targets(show_all: bool = False) -> list[str]:
    """The lines of ``list``: the built-in targets, then the emoji (every name with ``show_all``)."""
    from ncalab.targets import builtin_targets

    lines = [f"built-in targets: {', '.join(builtin_targets())}  (data.target=<name>)"]
    index = emoji_set.emoji_index()
    n_emoji = len({e.code for e in index.values()})
    lines.append(
        f"emoji: {n_emoji} from {emoji_set.EMOJI_SET} ({emoji_set.EMOJI_LICENSE}) under {len(index)} names "
        "(data.target=emoji:<name or code point>; `search <words>` finds names, `list --all` lists them)"
    )
    if show_all:
        width = min(max(len(name) for name in index), 32)
        lines += [f"{name:<{width}}  {index[name].code}" for name in sorted(index)]
    return lines


def search_lines(words: list[str], limit: int | None = SEARCH_LIMIT) -> tuple[list[str], int]:
    """The lines of ``search`` and how many emoji match (each emoji once, under its first name)."""
    found = emoji_set.search_emoji(" ".join(words))
    shown = found if limit is None else found[:limit]
    width = max((len(e.name) for e in shown), default=0)
    code_width = max((len(e.code) for e in shown), default=0)
    lines = [f"{e.name:<{width}}  {e.code:<{code_width}}  {e.char}" for e in shown]
    if len(shown) < len(found):
        lines.append(f"... and {len(found) - len(shown)} more (--limit {len(found)} shows them all)")
    return lines, len(found)


def preview_name(target: str) -> str:
    """The default file name of a target's preview: ``<name>_preview.png`` (an emoji by its name)."""
    if emoji_set.is_emoji_target(target):
        e = emoji_set.resolve_emoji(target)
        name = (
            e.name if re.fullmatch(r"[\w.-]+", e.name) else f"{e.name}_{e.code}"
        )  # keycap_# -> keycap_0023-...
    else:
        name = Path(target).stem
    return (re.sub(r"(?:[^\w.-]|_)+", "_", name).strip("._") or "target") + "_preview.png"


def write_preview(
    target: str,
    out: str | Path | None = None,
    size: int = 24,
    padding: int = 6,
    scale: int = 8,
    allow_upscale: bool = False,
) -> tuple[Path, tuple[int, int]]:
    """Write the PNG of ``target`` as training sees it (over white, upscaled ``scale`` times with NEAREST).
    Returns its path and the grid (height, width) in cells."""
    import numpy as np
    from PIL import Image

    from ncalab.nca import to_rgb
    from ncalab.targets import load_target

    rgba = load_target(target, size, padding, allow_upscale)
    rgb = to_rgb(rgba[None])[0]
    array = (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    h, w = array.shape[:2]
    image = Image.fromarray(array).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    path = Path(out).expanduser() if out is not None else Path(preview_name(target))
    try:
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
    except (OSError, ValueError) as exc:
        raise NCALabError(f"cannot write the preview to {str(path)!r} ({exc})") from exc
    return path, (h, w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,search,preview}")
    listing = commands.add_parser("list", help="the built-in targets and how many emoji there are")
    listing.add_argument("--all", action="store_true", help="every emoji name with its code point")
    search = commands.add_parser("search", help="emoji whose name contains every word")
    search.add_argument("words", nargs="+", help="words of the name (e.g. red heart)")
    search.add_argument(
        "--limit",
        type=_positive(1),
        default=SEARCH_LIMIT,
        help=f"show at most this many (default {SEARCH_LIMIT})",
    )
    preview = commands.add_parser("preview", help="a PNG of a target as training sees it, over white")
    preview.add_argument("target", help="a built-in name, an image file or emoji:<name or code point>")
    preview.add_argument("--out", help="the PNG to write (default <name>_preview.png in the current folder)")
    preview.add_argument("--size", type=_positive(1), default=24, help="data.target_size (default 24)")
    preview.add_argument("--padding", type=_positive(0), default=6, help="data.padding (default 6)")
    preview.add_argument("--scale", type=_positive(1), default=8, help="pixels per cell (default 8)")
    preview.add_argument("--allow-upscale", action="store_true", help="data.allow_upscale=true")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # the emoji characters, on a terminal that cannot show them
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        if args.command == "list":
            print("\n".join(list_targets(args.all)))
        elif args.command == "search":
            lines, n_found = search_lines(args.words, args.limit)
            if not n_found:
                near = emoji_set.closest(" ".join(args.words))
                hint = f"; closest names: {', '.join(near)}" if near else ""
                print(f"{PROG}: no emoji name contains all of: {' '.join(args.words)}{hint}", file=sys.stderr)
                return 1
            print("\n".join(lines))
        else:
            path, (h, w) = write_preview(
                args.target, args.out, args.size, args.padding, args.scale, args.allow_upscale
            )
            print(
                f"wrote {path}: {args.target} as training sees it, {w}x{h} cells ({args.size} px + "
                f"{args.padding} of padding), {args.scale} px per cell"
            )
            attribution = emoji_set.emoji_attribution(args.target)
            if attribution:
                print(attribution)
    except NCALabError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

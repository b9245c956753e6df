"""``python -m ncalab.demo export [<checkpoint>] <folder>`` | ``python -m ncalab.demo serve [<checkpoint>|<folder>]``.

Without a checkpoint (or folder) both take the pretrained models shipped with ncalab: the page opens on
``DEFAULT_PRETRAINED`` (or ``--pretrained NAME``) and offers every shipped model in its model picker.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from ncalab.demo import (
    DEFAULT_PRETRAINED,
    ExportError,
    export_checkpoint,
    export_pretrained,
    make_server,
    url_of,
)
from ncalab.errors import NCALabError


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: 0-65535 (0 picks a free one)")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ncalab.demo",
        description="Run an ncalab NCA in the browser: erase cells and watch the pattern regrow.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pretrained_help = (
        f"which shipped model the page opens on without a checkpoint (default: {DEFAULT_PRETRAINED}); "
        "the others are offered in its model picker"
    )
    export = sub.add_parser(
        "export", help="write a self-contained static page for a checkpoint (default: the shipped models)"
    )
    export.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="a .ckpt written by ncalab (e.g. outputs/runs/<run>/checkpoints/last.ckpt); "
        "default: every pretrained model shipped with ncalab",
    )
    export.add_argument("folder", help="where to write index.html, the scripts and the weights")
    export.add_argument("--name", default=None, help="the model's name shown on the page (with a checkpoint)")
    export.add_argument("--pretrained", default=None, help=pretrained_help)
    export.add_argument(
        "--force",
        action="store_true",
        help="export into a folder that holds other files (index.html, style.css, model.json... are overwritten)",
    )
    serve = sub.add_parser("serve", help="export (or take an exported folder) and serve it on 127.0.0.1")
    serve.add_argument(
        "source",
        nargs="?",
        default=None,
        help="a .ckpt, or a folder written by `export`; default: every pretrained model shipped with ncalab",
    )
    serve.add_argument("--port", type=_port, default=8000, help="0 picks a free port (default 8000)")
    serve.add_argument("--pretrained", default=None, help=pretrained_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "export":
            if args.checkpoint is None:
                index = export_pretrained(args.folder, args.pretrained, force=args.force)
            else:
                index = export_checkpoint(args.checkpoint, args.folder, name=args.name, force=args.force)
            print(
                f"wrote {index} (serve the folder statically, e.g. python -m ncalab.demo serve {args.folder})"
            )
            return 0
        return _serve(args)
    except (NCALabError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ncalab_demo_") as tmp:
        if args.source is None:
            folder = export_pretrained(tmp, args.pretrained).parent
        else:
            source = Path(args.source).expanduser()
            if source.is_dir():
                if not (source / "index.html").is_file() or not (
                    (source / "models.json").is_file() or (source / "model.json").is_file()
                ):
                    raise ExportError(
                        f"{str(source)!r} is not a folder written by `python -m ncalab.demo export`"
                    )
                folder = source
            else:
                folder = export_checkpoint(source, tmp).parent
        server = make_server(folder, port=args.port)
        signal.signal(signal.SIGTERM, _interrupt)  # a terminated server still removes its temporary folder
        print(f"serving {folder} at {url_of(server)} (Ctrl+C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

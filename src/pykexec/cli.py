"""The ``pykexec`` command line: a thin layer over :mod:`pykexec.api`.

Exit codes: 0 success; 2 bad input or usage, with one ``pykexec: error:``
line on stderr; 1 any other failure.  ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from . import __version__, api
from .errors import PykexecError, UsageError
from .limits import Limits


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every bad input."""

    def error(self, message: str):
        raise UsageError(message)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--max-output", type=lambda s: int(s, 0), metavar="BYTES",
                   help="cap on decompressed output (default 2 GiB, or $PYKEXEC_MAX_OUTPUT)")


# name: (help, [(flags, kwargs), ...])
COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]]]] = {
    "inspect": ("describe an image and every layer inside it", [
        (("image",), {"help": "boot image file"}),
        (("--json",), {"action": "store_true", "help": "print one JSON object"}),
    ]),
    "extract": ("write what a loader would hand the kernel: kernel, initrd, cmdline, dtb, vmlinux", [
        (("image",), {"help": "boot image file"}),
        (("-o", "--output"), {"required": True, "metavar": "DIR", "help": "output directory"}),
        (("--profile",), {"type": int, "metavar": "N", "help": "UKI profile @N (default @0)"}),
        (("--json",), {"action": "store_true", "help": "list what was written as JSON"}),
    ]),
}


def build_parser() -> Parser:
    parser = Parser(prog="pykexec", description="Understand, plan and load kexec boot images.")
    parser.add_argument("--version", action="version", version=f"pykexec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, options) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in options:
            p.add_argument(*flags, **kwargs)
        _add_common(p)
    return parser


def _limits(args: argparse.Namespace) -> Limits:
    limits = Limits.from_env()
    return limits if args.max_output is None else Limits(max_output=args.max_output)


def cmd_inspect(args: argparse.Namespace) -> int:
    report = api.inspect(args.image, limits=_limits(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['path']}: {report['size']} bytes, sha256 {report['sha256']}")
    for depth, layer in enumerate(report["layers"]):
        print(f"{'  ' * depth}[{depth}] {layer['format']} ({layer.get('arch') or 'no arch'})")
        for key, value in layer.items():
            if key not in ("format", "arch"):
                print(f"{'  ' * depth}    {key}: {_show(value)}")
    return 0


def _show(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:#x}" if value >= 4096 else str(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return " ".join(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def cmd_extract(args: argparse.Namespace) -> int:
    written = api.extract(args.image, args.output, profile=args.profile, limits=_limits(args))
    if args.json:
        print(json.dumps({k: str(v) for k, v in written.items()}))
    else:
        for name, path in written.items():
            print(f"{name}: {path}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inspect": cmd_inspect,
    "extract": cmd_extract,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return HANDLERS[args.command](args)
    except PykexecError as e:
        if debug:
            raise
        print(f"pykexec: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if debug:
            raise
        print(f"pykexec: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2 if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)) else 1
    except MemoryError:
        print("pykexec: error: out of memory; lower --max-output", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pykexec: error: interrupted", file=sys.stderr)
        return 130

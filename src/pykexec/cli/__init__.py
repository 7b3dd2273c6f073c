"""The ``pykexec`` command line: a thin layer over :mod:`pykexec.api`.

Exit codes: 0 success; 2 bad input or usage, with one ``pykexec: error:``
line on stderr; 1 any other failure.  ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from typing import TYPE_CHECKING, Callable

from .. import __version__
from ..errors import PykexecError, UsageError

if TYPE_CHECKING:
    from ..limits import Limits

# Each verb imports what it uses when it runs: ``extract`` and ``inspect`` need
# the format parsers only, not the loader, the syscall backend or the planner.
# Only the verb on the command line has its options built (all of them only for
# --help), so that ``--version`` and a usage error import no verb's module.


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every bad input."""

    def error(self, message: str):
        raise UsageError(message)


def _add_common(p: argparse.ArgumentParser) -> None:
    from ..limits import byte_count
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--max-output", type=lambda s: byte_count(s, "--max-output"), metavar="BYTES",
                   help="cap on decompressed output (default 512 MiB, or $PYKEXEC_MAX_OUTPUT)")


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
    "load": ("load a kernel to boot with `pykexec exec` (or on a crash, with --crash)",
             lambda: _load_options()),
    "exec": ("reboot into the loaded kernel now (syncs file systems first)", [
        (("--no-sync",), {"action": "store_true", "help": "do not sync file systems first"}),
        (("--carry",), {"action": "append", "default": [], "metavar": "NAME=FILE",
                        "help": "carry FILE into the next kernel in RAM (LUO, under KHO) as NAME; "
                                "`pykexec carried` there gets it back"}),
    ]),
    "carried": ("in a kernel started by `exec --carry`: list the carried files, or write one out", [
        (("name",), {"nargs": "?", "metavar": "NAME", "help": "the carried file to write out"}),
        (("-o", "--output"), {"metavar": "FILE", "help": "write NAME there (default: standard output)"}),
        (("--json",), {"action": "store_true", "help": "list as JSON"}),
    ]),
    "unload": ("unload the loaded kernel", [
        (("--crash",), {"action": "store_true", "help": "unload the crash kernel instead"}),
    ]),
    "status": ("report what is loaded", [
        (("--json",), {"action": "store_true", "help": "print one JSON object"}),
    ]),
}


# Verbs whose modules pull in heavy dependencies (the planner, cryptography,
# unicorn): imported only when that verb runs, or for the full --help.
EXTERNAL = {"machine": "pykexec.cli.plan", "plan": "pykexec.cli.plan",
            "verify": "pykexec.cli.verify", "emulate": "pykexec.cli.emulate"}


# Verbs whose code logs nothing: they neither import nor configure logging
# (tests/unit/test_lazy_imports.py fails if logging comes back on their path).
UNLOGGED = frozenset({"inspect", "extract"})


def _load_options() -> list[tuple[tuple[str, ...], dict]]:
    from . import plan as plan_cli
    from . import verify as trust_cli
    return [
        (("image",), {"help": "kernel image: bzImage, Image, zboot, UKI, ..."}),
        (("--initrd",), {"action": "append", "default": [], "metavar": "FILE",
                         "help": "initrd; repeat to concatenate several"}),
        (("--append",), {"metavar": "S", "help": "add to the image's own command line"}),
        (("--command-line",), {"metavar": "S", "help": "replace the command line"}),
        (("--reuse-cmdline",), {"action": "store_true",
                                "help": "start from /proc/cmdline without BOOT_IMAGE= and initrd="}),
        (("--profile",), {"type": int, "metavar": "N", "help": "UKI profile @N (default @0)"}),
        (("--addon",), {"action": "append", "metavar": "FILE",
                        "help": "UKI add-on; default: <uki>.extra.d/*.addon.efi"}),
        plan_cli.DTB_OPTION,
        plan_cli.ENTRY_OPTION,
        (("--crash",), {"action": "store_true", "help": "load a crash (kdump) kernel"}),
        (("--module",), {"action": "append", "default": [], "metavar": "FILE[,ARGS]",
                         "help": "Multiboot module (Xen: dom0 kernel, initrd), kexec_load only"}),
        (("--no-checks",), {"action": "store_true",
                            "help": "kexec_load: the purgatory skips its SHA-256 checks (kexec -i)"}),
        (("--mode",), {"choices": ("auto", "file", "user"), "default": "auto",
                       "help": "auto: kexec_file_load, falling back to kexec_load"}),
        (("--target",), {"choices": ("xen", "xen-efi"),
                         "help": "under Xen: the classic kexec load types (xen) or XenServer's EFI load "
                                 "types (xen-efi); default: xen, or xen-efi when Xen is in lockdown"}),
        (("--debug-syscall",), {"action": "store_true",
                                "help": "pass KEXEC_FILE_DEBUG: the kernel logs where it put each segment"}),
        (("--via-emulator",), {"action": "store_true",
                               "help": "run the image's own EFI stub under emulated UEFI and load "
                                       "what it hands over (automatic when no parser knows a PE)"}),
        (("--dry-run",), {"action": "store_true", "help": "show what would be loaded, and stop"}),
        (("--json",), {"action": "store_true", "help": "print the result as JSON"}),
            plan_cli.MACHINE_OPTION,
        *trust_cli.LOAD_OPTIONS,
    ]


def _external(name: str):
    return importlib.import_module(EXTERNAL[name])


def _command(name: str) -> tuple[str, list[tuple[tuple[str, ...], dict]]]:
    help_text, options = COMMANDS[name] if name in COMMANDS else _external(name).COMMANDS[name]
    return help_text, options() if callable(options) else options


def handler(name: str) -> Callable[[argparse.Namespace], int]:
    return HANDLERS[name] if name in HANDLERS else _external(name).HANDLERS[name]


def build_parser(wanted: str | None = None) -> Parser:
    """The parser; with ``wanted``, only that verb's options are built (and imported), and
    with ``""`` none: the verbs are only named, for argparse's usage errors."""
    parser = Parser(prog="pykexec", description="Understand, plan and load kexec boot images.")
    parser.add_argument("--version", action="version", version=f"pykexec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("kexec", help="kexec-tools compatible front end (pykexec kexec --help)",
                   add_help=False)
    for name in (*COMMANDS, *EXTERNAL):
        if wanted not in (None, name):
            if not wanted:
                sub.add_parser(name, add_help=False)  # a placeholder: never parses, never shown
            continue
        help_text, options = _command(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in options:
            p.add_argument(*flags, **kwargs)
        _add_common(p)
    return parser


def _limits(args: argparse.Namespace) -> Limits:
    from dataclasses import replace

    from ..limits import Limits, terminal_progress
    limits = Limits.from_env(progress=terminal_progress())
    return limits if args.max_output is None else replace(limits, max_output=args.max_output)


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .. import images
    report = images.inspect(args.image, limits=_limits(args))
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
    import json
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def cmd_extract(args: argparse.Namespace) -> int:
    from .. import images
    written = images.extract(args.image, args.output, profile=args.profile, limits=_limits(args))
    if args.json:
        import json
        print(json.dumps({k: str(v) for k, v in written.items()}))
    else:
        for name, path in written.items():
            print(f"{name}: {path}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from .. import api
    opts = api.LoadOptions(
        image=args.image, initrds=tuple(args.initrd), command_line=args.command_line,
        append=args.append, reuse_cmdline=args.reuse_cmdline, profile=args.profile,
        addons=None if args.addon is None else tuple(args.addon), crash=args.crash,
        mode=args.mode, debug=args.debug_syscall, require_signature=args.require_signature,
        trust=tuple(args.trust), modules=tuple(args.module), checks=not args.no_checks,
        via_emulator=args.via_emulator, dtb=args.dtb, target=args.target, entry=args.entry)
    from .plan import load_machine
    described = load_machine(args)  # the machine to plan for in a dry run; advice for a real load
    summary, report, predicted = api.load(opts, dry_run=args.dry_run, limits=_limits(args),
                                          machine=described if args.dry_run else None,
                                          advice=None if args.dry_run else described)
    if args.json:
        import json
        print(json.dumps(_load_json(summary, report, predicted)))
        return 0
    if predicted is not None:
        print(predicted)
    kind = "crash kernel" if summary.crash else "kernel"
    print(f"{kind}: {summary.kernel_format}, {summary.kernel_size} bytes "
          f"({' → '.join(summary.layers)}), passed as {summary.kernel_source}")
    print(f"initrd: {summary.initrd_size} bytes")
    print(f"cmdline: {summary.cmdline!r}")
    if summary.signature:
        print(f"signature: {summary.signature}")
    if report is not None:
        print(f"loaded with {report.syscall}")
    elif predicted is None:
        print("dry run: nothing loaded, and nothing predicted: pykexec has no placement for this image on "
              "this machine, so only the kernel's kexec_file_load can tell whether it would load")
    else:
        print("dry run: nothing loaded")
    return 0


def _load_json(summary, report, predicted) -> dict:
    """``load --json``: the summary, what was done, and the plan with each segment's SHA-256.

    Only this view hashes the segments: that reads every byte of the kernel and
    initrd, which the text view (and kexec_file_load) never need.
    """
    import dataclasses
    return {**dataclasses.asdict(summary), "loaded": report is not None,
            "syscall": report.syscall if report else None,
            "attempts": report.attempts if report else [],
            "plan": predicted.to_json(violations=predicted.validate()) if predicted else None}


def cmd_exec(args: argparse.Namespace) -> int:
    from .. import api
    carry = None
    if args.carry:
        from ..carry import parse_carry
        carry = {}
        for spec in args.carry:
            name, path = parse_carry(spec)
            if name in carry:
                raise UsageError(f"--carry {spec!r}: {name} is carried twice")
            carry[name] = path
    api.execute(sync=not args.no_sync, carry=carry)
    return 0


def cmd_carried(args: argparse.Namespace) -> int:
    from .. import carry
    if args.name is None:
        if args.output is not None:
            raise UsageError("-o FILE needs the NAME of the carried file to write")
        files = carry.carried()
        if args.json:
            import dataclasses
            import json
            print(json.dumps([dataclasses.asdict(f) for f in files]))
        for f in [] if args.json else files:
            print(f"{f.name}\t{f.size}\t{f.sha256}")
        return 0
    path = carry.retrieve(args.name, args.output)
    if args.output is None:
        with open(path, "rb") as f:
            while chunk := f.read(carry.CHUNK):
                sys.stdout.buffer.write(chunk)
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from .. import api
    call = api.unload(crash=args.crash)
    print(f"unloaded {'crash ' if args.crash else ''}kernel with {call}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from .. import api
    st = api.status()
    if args.json:
        print(json.dumps(dataclasses.asdict(st)))
        return 0
    show = {True: "yes", False: "no", None: "unknown"}
    print(f"kernel loaded: {show[st.loaded]}")
    print(f"crash kernel loaded: {show[st.crash_loaded]}")
    print(f"crash region size: {'unknown' if st.crash_size is None else st.crash_size}")
    print(f"kexec handover (KHO) active: {show[st.kho_active]}")
    print(f"next exec is a KHO handover: {show[st.kho_handover]}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inspect": cmd_inspect,
    "extract": cmd_extract,
    "load": cmd_load,
    "exec": cmd_exec,
    "unload": cmd_unload,
    "status": cmd_status,
    "carried": cmd_carried,
}


def _configure_logging(debug: bool) -> None:
    import logging
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="pykexec: %(message)s")


def _wanted(argv: list[str]) -> str | None:
    """The verb whose options to build: the first word when it is a verb and no top-level
    help comes before it; every verb's for the top-level help; else none (``--version``,
    a usage error)."""
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if any(a == "-h" or (len(a) > 2 and "--help".startswith(a)) for a in argv[:at]):
        return None
    word = argv[at] if at < len(argv) else None
    return word if word in COMMANDS or word in EXTERNAL else ""


def os_error(e: OSError) -> str:
    """One line for an OSError: the file when there is one, the reason and its errno name."""
    import errno
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    reason = f"{e.strerror or e}" + (f" ({name})" if name else "")
    return f"{e.filename}: {reason}" if e.filename else reason


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    from ..backends.linux import signals as interrupt
    stop = interrupt.install()  # SIGTERM and SIGHUP unwind like Ctrl-C (exit 128 + signal number)
    try:
        if argv[:1] == ["kexec"]:
            from . import kexec
            return stop.finish(kexec.main(argv[1:]))
        args = build_parser(_wanted(argv)).parse_args(argv)
        gc.freeze()  # pefile runs gc.collect() on every image it rejects; spare it the start-up heap
        if args.command not in UNLOGGED:
            _configure_logging(args.debug)
        return stop.finish(handler(args.command)(args))
    except PykexecError as e:
        if debug:
            raise
        print(f"pykexec: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 1
    except OSError as e:
        if debug:
            raise
        print(f"pykexec: error: {os_error(e)}", file=sys.stderr)
        return 2 if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)) else 1
    except MemoryError:
        print("pykexec: error: out of memory; lower --max-output", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        message, code = interrupt.describe(e)
        print(f"pykexec: error: {message}", file=sys.stderr)
        return code

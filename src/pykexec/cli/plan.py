"""The ``machine`` and ``plan`` verbs, for :mod:`pykexec.cli` to merge into its tables.

``COMMANDS`` has cli.py's shape (name -> (help, [(flags, kwargs), ...])) and
``HANDLERS`` maps each name to ``function(args) -> int``.  Errors are raised
as PykexecError subclasses; cli.main prints them and returns their exit code.
The ``load`` verb takes ``--machine`` and :func:`load_machine` from here; the
loader API, the planner and machine descriptions are imported by the handlers
that use them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import UsageError
from ..receivers import TABLE, TARGETS

if TYPE_CHECKING:
    from ..machine.model import Machine

MACHINE_OPTION = (("--machine",), {"metavar": "FILE",
                                   "help": "a machine description (JSON from 'pykexec machine --json', or a "
                                           "/proc/iomem dump) instead of this host"})
ENTRY_OPTION = (("--entry",), {
    "type": int, "choices": sorted(set().union(*(e.entries for e in TABLE)), reverse=True), "metavar": "BITS",
    "help": "an x86 bzImage through kexec_load: enter it at 64 (startup_64), 32 (the 32-bit boot protocol, "
            "kexec --entry-32bit) or 16 (its real-mode setup code, kexec --real-mode); default: the first "
            "the image has"})
DTB_OPTION = (("--dtb",), {"metavar": "FILE", "help": "arm64 kexec_load: the device tree to hand on "
                                                   "(default: the UKI's .dtb, else /sys/firmware/fdt)"})

COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]]]] = {
    "machine": ("describe this host's memory, crash region and kexec state (no root needed)", [
        (("--json",), {"action": "store_true", "help": "print the machine description as JSON"}),
        MACHINE_OPTION,
    ]),
    "plan": ("plan where a load would go and check it as the receiver would", [
        (("image",), {"help": "boot image file"}),
        (("--initrd",), {"metavar": "FILE", "help": "initrd to load (default: the one the image carries)"}),
        (("--append",), {"metavar": "S", "help": "add to the image's own command line (a UKI's .cmdline)"}),
        (("--command-line",), {"metavar": "S", "help": "replace the command line"}),
        (("--crash",), {"action": "store_true", "help": "plan a crash (kdump) load"}),
        (("--target",), {"choices": TARGETS, "help": "receiver: kexec_file_load (linux-file), kexec_load "
                         "(linux-user), Xen (xen), Xen's EFI load types as XenServer's Xen has them (xen-efi) or as "
                         "the v2 series posted them (xen-efi-v2); default from image and machine"}),
        MACHINE_OPTION,
        (("--json",), {"action": "store_true", "help": "print the plan as one JSON object"}),
        (("--profile",), {"type": int, "metavar": "N", "help": "UKI profile @N (default @0)"}),
        DTB_OPTION,
        ENTRY_OPTION,
    ]),
}


def load_machine(args: argparse.Namespace) -> Machine | None:
    """The machine ``--machine FILE`` describes, or None for this host."""
    path = getattr(args, "machine", None)
    if not path:
        return None
    from ..machine import description
    return description.load(path)


def _machine(args: argparse.Namespace) -> Machine:
    from ..machine import snapshot
    return load_machine(args) or snapshot()


def cmd_machine(args: argparse.Namespace) -> int:
    import json

    from ..machine import format_machine, to_json
    machine = _machine(args)
    if args.json:
        print(json.dumps(to_json(machine), indent=2))
    else:
        print(format_machine(machine))
    return 0


def _mapped(path: str) -> bytes | memoryview:
    """A file's bytes, mapped as ``load`` maps them: the planner reads the headers it parses,
    and only ``--json`` (each segment's SHA-256) or a user-mode build reads the rest.  What
    cannot be mapped (a pipe) is read."""
    from ..api import open_file
    try:
        opened = open_file(path)
    except UsageError:  # not a regular file
        return Path(path).read_bytes()
    opened.close()  # the map outlives the descriptor
    return opened.data


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from .. import api
    from ..formats.prepare import prepare
    from ..limits import Limits
    from ..plan import plan
    machine = _machine(args)
    prepared = prepare(_mapped(args.image), profile=args.profile, limits=Limits.from_env())
    initrd = _mapped(args.initrd) if args.initrd else None
    cmdline = api.compose_cmdline(prepared.cmdline, command_line=args.command_line, append=args.append)
    result = plan(prepared, machine=machine, target=args.target, crash=args.crash, initrd=initrd,
                  cmdline=cmdline, image_name=Path(args.image).name, dtb=api.read_dtb(args.dtb),
                  entry=args.entry)
    violations = result.validate()
    if args.json:
        print(json.dumps(result.to_json(violations=violations), indent=2))
    else:
        print(result)
        for v in violations:
            print(f"  refused: {v}")
    api.refuse_if_violated(result)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "machine": cmd_machine,
    "plan": cmd_plan,
}

__all__ = ["COMMANDS", "HANDLERS", "cmd_machine", "cmd_plan", "UsageError"]

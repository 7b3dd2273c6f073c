"""``pykexec emulate``: the CLI pieces, for :mod:`pykexec.cli` to wire in.

``COMMANDS`` has the shape of ``pykexec.cli.COMMANDS`` (name -> (help, [(flags,
kwargs), ...])) and ``HANDLERS`` maps the name to ``handler(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..limits import terminal_progress


def _size(text: str) -> int:
    """A byte count: 2G, 512M, 0x80000000."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t, 0)


def _count(text: str) -> int:
    """A count: 5000000, 5M, 50G (decimal multipliers)."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t, 0)


COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]]]] = {
    "emulate": ("run the image's own EFI stub under emulated UEFI and capture what it hands "
                "the kernel", [
                    (("image",), {"help": "PE boot image: bzImage, arm64 Image, zboot, UKI, ..."}),
                    (("--initrd",), {"metavar": "FILE",
                                     "help": "initrd offered through LoadFile2 on the "
                                             "LINUX_EFI_INITRD_MEDIA device path"}),
                    (("--cmdline",), {"metavar": "S",
                                      "help": "command line, passed as LoadOptions (UTF-16)"}),
                    (("--arch",), {"choices": ("x86_64", "arm64"),
                                   "help": "expected architecture (default: the PE header's)"}),
                    (("-o", "--output"), {"metavar": "DIR",
                                          "help": "write kernel, initrd, cmdline, boot_params "
                                                  "or dtb, and report.json here"}),
                    (("--json",), {"action": "store_true", "help": "print the report as JSON"}),
                    (("--trace",), {"action": "store_true",
                                    "help": "log every firmware service call to stderr"}),
                    (("--memory",), {"type": _size, "default": 2 << 30, "metavar": "BYTES",
                                     "help": "guest RAM (default 2G; mapped as it is used)"}),
                    (("--max-instructions",), {"type": _count, "metavar": "N",
                                               "help": "stop after about N instructions "
                                                       "(default 50G)"}),
                    (("--max-seconds",), {"type": float, "metavar": "S",
                                          "help": "stop after S seconds (default 600)"}),
                    (("--stop-at",), {"choices": ("kernel", "kernel-stub"), "default": "kernel",
                                      "help": "kernel (default): the hand-over to the kernel; "
                                              "kernel-stub: the entry of a nested kernel's own "
                                              "EFI stub (a UKI's .linux), what a loader needs, "
                                              "else the hand-over"}),
                ]),
}


def cmd_emulate(args: argparse.Namespace) -> int:
    from ..efi import emulate, write_capture
    image = Path(args.image)
    data = image.read_bytes()
    initrd = Path(args.initrd).read_bytes() if args.initrd else None
    trace = (lambda line: print(f"trace: {line}", file=sys.stderr, flush=True)) if args.trace else None
    if args.memory < (16 << 20):
        raise UsageError(f"--memory {args.memory} is too small; give at least 16M")
    progress = None if trace else terminal_progress(unit=("M instructions", 10**6))
    try:
        cap = emulate(data, initrd=initrd, cmdline=args.cmdline, arch=args.arch,
                      memory=args.memory, max_instructions=args.max_instructions,
                      max_seconds=args.max_seconds, trace=trace, name=image.name,
                      stop_at=args.stop_at, progress=progress)
    except BaseException:
        if progress is not None and progress.last:
            sys.stderr.write("\n")     # end the progress line before the error's
        raise
    written = write_capture(cap, args.output) if args.output else {}
    if args.json:
        print(json.dumps({**cap.report, "written": {k: str(v) for k, v in written.items()}},
                         indent=2))
        return 0
    r = cap.report
    where = "kernel's EFI stub entry" if r["stopped_at"] == "kernel-stub" else "hand-over"
    print(f"{image}: {r['arch']} {where} at {cap.entry:#x} ({r['handover']})")
    print(f"kernel: {len(cap.kernel)} bytes at {cap.kernel_base:#x}, entry offset "
          f"{cap.entry_offset:#x}")
    print(f"initrd: {'none' if cap.initrd is None else f'{len(cap.initrd)} bytes'}")
    print(f"cmdline: {cap.cmdline!r}")
    if r.get("console"):
        print("console: " + r["console"].replace("\r", "").rstrip().replace("\n", "\n         "))
    ins = r.get("instructions")
    rate = f", {ins / r['seconds'] / 1e6:.0f} M/s" if ins and r["seconds"] else ""
    print(f"{sum(r['calls'].values())} service calls, "
          f"{'?' if ins is None else ins} instructions in {r['seconds']:.2f} s{rate}")
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"emulate": cmd_emulate}

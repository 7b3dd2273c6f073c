#!/usr/bin/env python3
"""The main job end to end: a QEMU guest boots a Debian kernel, pykexec plans,
loads and execs a second kernel, and the second kernel reports its command line.

Run by scripts/demo after the inspect/extract/plan part; uses the VM test
harness (tests/vm/harness.py), which fetches and caches the kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.vm import harness as h  # noqa: E402


def main() -> int:
    h.prepare()
    marker = h.token()
    cmdline = f"console=ttyS0 stage=2 demo={marker}"
    g = h.Guest("demo")
    g.stage(1, h.sh_script(f"""
run plan pykexec load --dry-run /vm/vmlinuz --initrd /vm/initrd.img --command-line "{cmdline}"
run load pykexec load /vm/vmlinuz --initrd /vm/initrd.img --command-line "{cmdline}" || exit 1
run exec pykexec exec
"""))
    g.stage(2, h.STAGE2_REPORT)
    print("vm-demo: booting a Debian kernel in QEMU (TCG); stage 1 runs pykexec", flush=True)
    serial = g.boot()
    print("== in the first kernel: pykexec load --dry-run (the plan)")
    print(serial.lines("plan.out"))
    print("== in the first kernel: pykexec load, then pykexec exec")
    print(serial.lines("load.out"))
    print("== the second kernel reports its command line:")
    got = serial.value("cmdline")
    print(got)
    if got.strip() != cmdline:
        print(f"vm-demo: expected {cmdline!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

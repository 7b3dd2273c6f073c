#!/usr/bin/env python3
"""pykexec against Debian's kexec-tools in Xen's dom0 (Xen 4.17 under QEMU TCG), one boot.

The stack is tests/vm/test_xen_dom0.py's: QEMU's Multiboot loader boots Debian's
Xen 4.17 with ``crashkernel=512M@1G``; dom0 is bookworm's generic kernel with
the harness's initramfs, which loads ``xen-privcmd`` and ``xenfs``.  Both
loaders then load the same files with the same command line: bookworm's cloud
kernel (``/vm/vmlinuz``) and the guest's own initramfs (``/vm/initrd.img``).
kexec-tools (2.0.25, which dlopens libxenctrl) and pykexec (``pykexec kexec``,
the shim's command line: the hypercall through /dev/xen/privcmd) alternate,
RUNS times each, for ``-l`` (KEXEC_TYPE_DEFAULT) and ``-p`` (KEXEC_TYPE_CRASH);
after each loader's pair both images are unloaded (not measured).  Per load:
wall time of the whole process, user and system time, and peak RSS, from
``os.wait4`` (benchmarks/vmmeasure.py).  Measured once beside them:
``python3 -c pass`` and ``pykexec --version``, the interpreter's and pykexec's
start-up in this PV dom0, where every system call is a hypercall.  Host timing
of a TCG guest: the ratios are what is meaningful.

Run:  .venv/bin/python benchmarks/bench_vm_xen.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.vm import harness as h  # noqa: E402
from tests.vm import usermode_support as um  # noqa: E402
from tests.vm.test_xen_dom0 import XEN_SETUP, boot_xen, expect_xen_dom0, xen_guest  # noqa: E402
from vmmeasure import MEASURE  # noqa: E402

KEXEC_TOOLS = "/opt/kexec-tools/sbin/kexec"
LOADERS = {"kexec-tools": [KEXEC_TOOLS], "pykexec": ["pykexec", "kexec"]}
FILES = ["/vm/vmlinuz", "--initrd", "/vm/initrd.img", "--append", "console=ttyS0 bench"]

GUEST = r'''
import json, os, subprocess, sys, tempfile, time
{measure}
LOADERS = {loaders}
FILES = {files}
context = {{name: measure(argv) for name, argv in (
    ("python3 -c pass", [sys.executable, "-c", "pass"]), ("pykexec --version", ["pykexec", "--version"]))}}
mark("bench-context", json.dumps(context))
results = {{}}
for run in range({runs}):
    for name, argv in LOADERS.items():
        for kind in ("-l", "-p"):
            r = measure(argv + [kind] + FILES)
            results.setdefault(f"{{name}} {{kind}}", []).append(r)
        status = subprocess.run(["pykexec", "status", "--json"], capture_output=True, text=True).stdout
        st = json.loads(status)
        if not (st["loaded"] and st["crash_loaded"]):
            mark("bench-not-loaded", name, status.replace("\n", " "))
        subprocess.run(["pykexec", "unload"]); subprocess.run(["pykexec", "unload", "--crash"])
mark("bench-load", json.dumps(results))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="loads of each kind by each loader (default 3)")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    t0 = time.monotonic()
    h.prepare()
    g = xen_guest("bench-vm-xen")
    # stage 1 (dom0's shell) loads the Xen modules and runs the Python benchmark, kept as stage 2
    g.stage(1, h.sh_script(XEN_SETUP + "/vm/scenario/stage2\n"))
    g.stage(2, h.py_script(GUEST.format(measure=MEASURE, loaders=LOADERS, files=FILES, runs=args.runs)))
    serial = boot_xen(g, timeout=600 + 120 * args.runs)
    expect_xen_dom0(serial)
    if not serial.has("bench-load"):
        serial.fail("the guest printed no benchmark")
    loads, context = json.loads(serial.value("bench-load")), json.loads(serial.value("bench-context"))
    if args.json:
        print(json.dumps({"load": loads, "context": context, "qemu_seconds": serial.seconds}, indent=1))
    failed = [(k, r) for k, v in loads.items() for r in v if r["rc"] != 0]
    failed += [(v, {}) for v in serial.values("bench-not-loaded")]
    for k, r in failed:
        print(f"FAILED {k}: {r.get('err', '').strip()}", file=sys.stderr)
    print(f"dom0 of Xen 4.17 (TCG), {args.runs} runs each; QEMU {serial.seconds:.0f} s, "
          f"whole benchmark {time.monotonic() - t0:.0f} s\n")
    report(loads, context)
    return 1 if failed else 0


def report(loads: dict, context: dict) -> None:
    """Per loader and type the medians of wall, user, sys and peak RSS, then the ratios."""
    med = um.median
    print(f"{'case':<18} {'wall s':>8} {'min':>7} {'max':>7} {'user s':>8} {'sys s':>7} {'peak RSS MiB':>13}")
    for key, rs in {**loads, **{k: [v] for k, v in context.items()}}.items():
        walls = [r["wall"] for r in rs]
        print(f"{key:<18} {med(walls):8.2f} {min(walls):7.2f} {max(walls):7.2f} "
              f"{med([r['utime'] for r in rs]):8.2f} {med([r['stime'] for r in rs]):7.2f} "
              f"{med([r['maxrss_kib'] for r in rs]) / 1024:13.1f}")
    for kind in ("-l", "-p"):
        p, k = loads[f"pykexec {kind}"], loads[f"kexec-tools {kind}"]
        print(f"pykexec / kexec-tools {kind}: wall x{med([r['wall'] for r in p]) / med([r['wall'] for r in k]):.2f}, "
              f"peak RSS x{med([r['maxrss_kib'] for r in p]) / med([r['maxrss_kib'] for r in k]):.2f}"
              "  (target: wall <= 1.5x)")


if __name__ == "__main__":
    sys.exit(main())

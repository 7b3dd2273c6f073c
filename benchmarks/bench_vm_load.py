#!/usr/bin/env python3
"""pykexec load vs Debian's kexec-tools ``kexec -s -l``, inside one QEMU guest.

Both load the same bzImage (bookworm's cloud kernel), the same initrd (the
guest's own initramfs, ~40 MB) and the same command line with
kexec_file_load, in the same guest, alternately, RUNS times each; each load
is followed by an unload with kexec-tools' ``kexec -u`` (not measured).

Per run: wall time (``time.perf_counter`` around spawn..reap) and peak memory
(``ru_maxrss`` of that child, from ``os.wait4``: the per-child form of
``resource.getrusage(RUSAGE_CHILDREN)``, which would give the maximum over all
children so far).  Medians are printed, with pykexec/kexec-tools ratios.
``pykexec --version`` is measured too: the interpreter's start-up and
imports, which dominate pykexec's cost under TCG.

``--balanced``: in this guest the kernel's own work in kexec_file_load
alternates from one load to the next (even after an unload): identical
``kexec -s -l`` loads in a row take about 3.9, 3.3, 3.9, 3.3 s of system
time with the ~40 MB initrd.  Alternating the two loaders puts pykexec on
every other load, always the costly one; with ``--balanced`` an unmeasured
``kexec -s -l`` load (and unload) follows each measured load, so that every
measured load, pykexec's and kexec-tools', is on the same side.

Run:  .venv/bin/python benchmarks/bench_vm_load.py [--runs 5] [--memory 1024] [--small] [--balanced] [--json]
Under TCG everything is 10-40x slower than on hardware; the ratios are what
is meaningful, and they still weigh interpreter start-up more than a real
machine would.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.vm import harness as h  # noqa: E402
from vmmeasure import MEASURE  # noqa: E402

GUEST = r'''
import json, os, subprocess, tempfile, time

RUNS = {runs}
BALANCED = {balanced}
KT = "{kexec_tools}"
CMDLINE = "console=ttyS0 stage=2"
INITRDS = {initrds}

{measure}

results = {{}}
for label, initrd in INITRDS.items():
    cases = {{
        "pykexec load": ["pykexec", "load", "--mode", "file", "/vm/vmlinuz", "--initrd", initrd,
                         "--command-line", CMDLINE],
        "kexec -s -l": [KT, "-s", "-l", "/vm/vmlinuz", "--initrd", initrd, "--command-line", CMDLINE],
    }}
    for i in range(RUNS):
        for name, argv in cases.items():
            r = measure(argv)
            results.setdefault(label + ": " + name, []).append(r)
            mark("run", label, name, i, json.dumps(r))
            subprocess.run([KT, "-u"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if BALANCED:  # an unmeasured load: the next measured one is on the same side
                subprocess.run(cases["kexec -s -l"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                subprocess.run([KT, "-u"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for i in range(RUNS):
    r = measure(["pykexec", "--version"])
    results.setdefault("pykexec --version", []).append(r)
mark("bench", json.dumps(results))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB")
    ap.add_argument("--small", action="store_true", help="also load with a tiny initrd (isolates fixed costs)")
    ap.add_argument("--balanced", action="store_true",
                    help="an unmeasured load after each measured one (the kernel's cost alternates)")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = ap.parse_args(argv)

    h.prepare()
    g = h.Guest("bench-vm-load")
    initrds = {"full initrd": h.GUEST_INITRD}
    if args.small:
        g.archive("/vm/small.cpio", {"/vm/small": "x\n"})
        initrds["small initrd"] = "/vm/small.cpio"
    g.stage(1, h.py_script(GUEST.format(measure=MEASURE, runs=args.runs, kexec_tools=h.GUEST_KEXEC_TOOLS, initrds=repr(initrds),
                                     balanced=args.balanced)))
    serial = g.boot(memory=args.memory, timeout=300 + (180 if args.balanced else 120) * args.runs * len(initrds))
    if not serial.has("bench"):
        serial.fail("the guest printed no benchmark result")
    results = json.loads(serial.value("bench"))
    if args.json:
        print(json.dumps(results, indent=1))

    failed = {k: [r for r in v if r["rc"] != 0] for k, v in results.items()}
    for k, v in failed.items():
        for r in v:
            print(f"FAILED {k}: rc={r['rc']} {r['err'].strip()}", file=sys.stderr)

    def med(key, field):
        return statistics.median(r[field] for r in results[key])

    print(f"guest: {args.memory} MiB, TCG, {args.runs} runs each{', balanced' if args.balanced else ''}, medians "
          f"(the whole boot took {serial.seconds:.0f} s)")
    print(f"{'case':<34} {'wall s':>8} {'user s':>8} {'sys s':>8} {'peak RSS MiB':>13}")
    for key in results:
        print(f"{key:<34} {med(key, 'wall'):8.2f} {med(key, 'utime'):8.2f} {med(key, 'stime'):8.2f} "
              f"{med(key, 'maxrss_kib') / 1024:13.1f}")
    for label in initrds:
        p, k = f"{label}: pykexec load", f"{label}: kexec -s -l"
        print(f"{label}: pykexec / kexec-tools: wall x{med(p, 'wall') / med(k, 'wall'):.2f}, "
              f"peak RSS x{med(p, 'maxrss_kib') / med(k, 'maxrss_kib'):.2f}")
    return 1 if any(failed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

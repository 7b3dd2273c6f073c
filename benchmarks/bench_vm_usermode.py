#!/usr/bin/env python3
"""pykexec's user mode (kexec_load + its own purgatory) vs Debian's kexec-tools ``kexec -c -l``,
inside QEMU (TCG), in one chain of kexec'd kernels started by one QEMU boot.

(a) **load**: in the first kernel, ``pykexec load --mode user`` and
    ``kexec -c -l`` (kexec-tools 2.0.25, kexec_load) load the same bzImage
    (bookworm's cloud kernel), the same initrd and the same command line,
    alternately, RUNS times each; each load is followed by ``kexec -u`` (not
    measured).  Per run: wall time of the whole process (``time.perf_counter``
    around spawn..reap) and its peak RSS (``ru_maxrss`` from ``os.wait4``).

(b) **exec -> next kernel**: the kernel then kexecs itself 2*RUNS times,
    alternately loaded by pykexec (odd hops) and kexec-tools (even hops): each
    kernel of the chain rebuilds the initrd, loads the next kernel with one
    loader, and calls reboot(LINUX_REBOOT_CMD_KEXEC) itself (ctypes, the same
    for both loaders).  The initrd is the guest's own initramfs followed by an
    archive holding the kernel and that initramfs (so every kernel of the chain
    can go on): ~100 MB, above the 64 MiB asked for.

    Method: QEMU's serial output is read through a pipe on the host and each
    line is stamped with ``time.monotonic()`` when its first byte arrives
    (tests/vm/usermode_support.py: ``boot_stamped``).  Before the exec the
    guest raises the console log level to 8, so the old kernel prints
    ``kexec_core: Starting new kernel`` (kernel_kexec(), after device shutdown,
    just before machine_kexec()).  The interval runs from that line to the
    first line of the new kernel (no printk time stamp, or one smaller than
    the old kernel's: with ``earlyprintk=serial`` that is the kernel's first
    message), so it holds relocate_kernel's copy of the segments, the
    purgatory (SHA-256 of every segment), the decompressor, and the kernel's
    start up to its first message; only the purgatory differs between the two
    loaders (the kernel, initrd and command line are the same).  The time to
    ``Linux version`` and to the new kernel's /init (``stage-begin``) are
    printed too.  Host timing of a TCG guest: every number also carries the
    host's load; the ratios are what is meaningful.  ``unpack`` is the new
    kernel's initramfs unpacking by its own printk clock.

    ``--same-work`` (default): before each hop's load the kernel also runs the
    other loader's load (then ``kexec -u``), so the kernel before every hop ran
    the same programs.  With ``--no-same-work`` the kernel before a pykexec hop
    ran a big Python process and the one before a kexec-tools hop did not; in
    such a run (3 hops each) the kernels started by pykexec unpacked their
    initramfs in 10.6-11.1 s against 7.1-7.6 s, while with the same work
    before every hop the difference went away (9.7-11.0 s for both, 2 hops
    each): it came from what ran before the exec, not from the loader.  On a
    busy 2-CPU host ``unpack`` and ``/init`` then spread over 5-16 s, far more
    than any loader effect; ``first line`` is the column that measures the
    purgatory.

Run:  .venv/bin/python benchmarks/bench_vm_usermode.py [--runs 3] [--memory 2048] [--no-same-work] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.vm import harness as h  # noqa: E402
from tests.vm import usermode_support as um  # noqa: E402
from vmmeasure import CHAIN, MEASURE, NEWC  # noqa: E402

GUEST = r'''
import ctypes, json, os, re, shutil, subprocess, tempfile, time

RUNS, HOPS, SAME_WORK = {runs}, {hops}, {same_work}
KT = "{kexec_tools}"
MIN_INITRD = 64 << 20
m = re.search(r"(?:^|\s)stage=(\d+)", open("/proc/cmdline").read())
STAGE = int(m.group(1)) if m else 1
NEXT_CMDLINE = "console=ttyS0 panic=-1 earlyprintk=serial,ttyS0,115200 stage=%d" % (STAGE + 1)

{newc}

# the next kernel's initrd: this initramfs + (kernel, this initramfs), so the chain can go on
INITRD = "/tmp/next.img"
with open(INITRD, "wb") as out:
    with open("/vm/initrd.img", "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    out.write(b"\0" * (-out.tell() % 4))
    newc(out, [("vm/vmlinuz", "/vm/vmlinuz"), ("vm/initrd.img", "/vm/initrd.img")])
size = os.path.getsize(INITRD)
assert size >= MIN_INITRD, size
mark("initrd-bytes", STAGE, size)

def pykexec_load():
    return ["pykexec", "load", "--mode", "user", "/vm/vmlinuz", "--initrd", INITRD,
            "--command-line", NEXT_CMDLINE]

def kt_load():
    return [KT, "-c", "-l", "/vm/vmlinuz", "--initrd", INITRD, "--command-line", NEXT_CMDLINE]

{measure}

PEER = "kexec -c -l"

def stage1_extra():
    pass

{chain}
'''

TIMESTAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def _stamp(text: str) -> float | None:
    m = TIMESTAMP.match(text)
    return float(m.group(1)) if m else None


def hops(boot: um.StampedBoot, count: int) -> list[dict]:
    """Per hop: the loader, and the host seconds from 'Starting new kernel' to the new kernel's
    first line, to its 'Linux version' and to its /init."""
    serial = boot.serial
    out = []
    pos = 0
    for stage in range(1, count + 1):
        hop_i = next((j for j in range(pos, len(boot.lines)) if f"@@PYKX hop {stage} " in boot.lines[j].text), None)
        if hop_i is None:
            serial.fail(f"hop {stage} never began")
        loader = boot.lines[hop_i].text.split("@@PYKX hop ", 1)[1].split()[1]
        i = next((j for j in range(hop_i + 1, len(boot.lines)) if "Starting new kernel" in boot.lines[j].text), None)
        if i is None:
            serial.fail(f"hop {stage}: no 'Starting new kernel' line after the exec")
        start = boot.lines[i]
        pos = i + 1
        old = _stamp(um.strip_ansi(start.text)) or float("inf")
        first = None
        for ln in boot.lines[i + 1:]:
            text = um.strip_ansi(ln.text)
            if not text:
                continue
            ts = _stamp(text)
            if ts is None or ts < old:
                first = ln
                break
        if first is None:
            serial.fail(f"hop {stage}: the new kernel printed nothing")
        version = next((ln for ln in boot.lines[i + 1:] if "Linux version" in ln.text), None)
        init = next((ln for ln in boot.lines[i + 1:] if f"@@PYKX stage-begin {stage + 1} " in ln.text), None)
        if version is None or init is None:
            serial.fail(f"hop {stage}: the new kernel did not reach 'Linux version' and /init")
        # the initramfs unpack, by the new kernel's own printk clock
        section = boot.lines[i + 1:boot.index(init)]
        unpack = [_stamp(um.strip_ansi(ln.text)) for ln in section
                  if "Trying to unpack rootfs" in ln.text or "Freeing initrd memory" in ln.text]
        out.append({"stage": stage, "loader": loader, "first_line": um.strip_ansi(first.text)[:60],
                    "to_first": first.t - start.t, "to_version": version.t - start.t,
                    "to_init": init.t - start.t,
                    "unpack": unpack[1] - unpack[0] if len(unpack) == 2 and None not in unpack else float("nan")})
    return out


def main(argv: list[str] | None = None) -> int:
    args = chain_arguments(__doc__, argv)

    count = 2 * args.runs
    h.prepare()
    g = h.Guest("bench-vm-usermode")
    script = h.py_script(GUEST.format(newc=NEWC, chain=CHAIN, measure=MEASURE, runs=args.runs, hops=count, kexec_tools=h.GUEST_KEXEC_TOOLS,
                                     same_work=args.same_work))
    for stage in range(1, count + 2):
        g.stage(stage, script)
    boot = um.boot_stamped(g, memory=args.memory, timeout=600 + 150 * args.runs + (300 if args.same_work else 240) * count)
    serial = boot.serial
    loads, chain = chain_results(boot, count)
    if args.json:
        print(json.dumps({"load": loads, "hops": chain}, indent=1))

    failed = [(k, r) for k, v in loads.items() for r in v if r["rc"] != 0]
    for k, r in failed:
        print(f"FAILED {k}: rc={r['rc']} {r['err'].strip()}", file=sys.stderr)

    sizes = {v.split()[1] for v in serial.values("initrd-bytes")}
    print(f"guest: {args.memory} MiB, TCG ({os.environ.get('PYKEXEC_VM_CPU', 'max')}), "
          f"{serial.value('kexec-tools')}, initrd {', '.join(sorted(sizes))} bytes, "
          f"{args.runs} runs each; whole chain {serial.seconds:.0f} s")
    print()
    report_loads(loads, "kexec -c -l")
    print()
    report_hops(chain)
    print(f"serial log with host stamps: {g.dir / 'serial.stamped'}")
    return 1 if failed else 0


def chain_results(boot: um.StampedBoot, count: int) -> tuple[dict, list[dict]]:
    """(part (a)'s loads, part (b)'s hops) from a chain that reached its end."""
    serial = boot.serial
    if not serial.has("bench-load"):
        serial.fail("the guest printed no load benchmark")
    if not serial.has("chain-done"):
        serial.fail("the chain of kexecs did not reach its end")
    return json.loads(serial.value("bench-load")), hops(boot, count)


def chain_arguments(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The options of a chain benchmark (this one and bench_vm_arm64.py), parsed."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each loader, for (a) and for (b) (default 3)")
    ap.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    ap.add_argument("--same-work", action=argparse.BooleanOptionalAction, default=True,
                    help="before each hop's load, run the other loader's load too (then unload), so the "
                         "kernel before every hop did the same work (default; separates the loaders' effect "
                         "on the next kernel from what ran before the exec)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def report_loads(loads: dict, peer: str, target: str = "", *, title: str = "(a) load",
                 ours: str = "pykexec load --mode user") -> None:
    """A load table: per loader (``ours`` and ``peer`` among them) the medians of wall, user,
    sys and peak RSS; then pykexec's ratios to the peer."""
    med = um.median
    width = max(28, *map(len, loads))
    print(f"{title}: whole process, medians")
    print(f"{'case':<{width}} {'wall s':>8} {'min':>7} {'max':>7} {'user s':>8} {'sys s':>7} {'peak RSS MiB':>13}")
    for key, rs in loads.items():
        walls = [r["wall"] for r in rs]
        print(f"{key:<{width}} {med(walls):8.2f} {min(walls):7.2f} {max(walls):7.2f} "
              f"{med([r['utime'] for r in rs]):8.2f} {med([r['stime'] for r in rs]):7.2f} "
              f"{med([r['maxrss_kib'] for r in rs]) / 1024:13.1f}")
    p, k = loads[ours], loads[peer]
    print(f"pykexec / kexec-tools: wall x{med([r['wall'] for r in p]) / med([r['wall'] for r in k]):.2f}, "
          f"peak RSS x{med([r['maxrss_kib'] for r in p]) / med([r['maxrss_kib'] for r in k]):.2f}{target}")


def report_hops(chain: list[dict], target: str = "") -> None:
    """Part (b)'s table: per hop the host seconds from 'Starting new kernel', then medians and ratios."""
    med = um.median
    print("(b) exec -> next kernel, host seconds from 'Starting new kernel' (per hop, then medians)")
    print(f"{'hop':>3} {'loader':<12} {'first line':>10} {'Linux version':>14} {'/init':>8} {'unpack*':>8}"
          "  first line")
    for r in chain:
        print(f"{r['stage']:>3} {r['loader']:<12} {r['to_first']:10.2f} {r['to_version']:14.2f} "
              f"{r['to_init']:8.2f} {r['unpack']:8.2f}  {r['first_line']}")
    by = {name: [r for r in chain if r["loader"] == name] for name in ("pykexec", "kexec-tools")}
    for name, rs in by.items():
        print(f"    {name:<12} {med([r['to_first'] for r in rs]):10.2f} "
              f"{med([r['to_version'] for r in rs]):14.2f} {med([r['to_init'] for r in rs]):8.2f} "
              f"{med([r['unpack'] for r in rs]):8.2f}  (median)")
    print("    * unpack: 'Trying to unpack rootfs' to 'Freeing initrd memory', by the new kernel's printk clock")
    pf, kf = (med([r["to_first"] for r in by[n]]) for n in ("pykexec", "kexec-tools"))
    pi, ki = (med([r["to_init"] for r in by[n]]) for n in ("pykexec", "kexec-tools"))
    print(f"pykexec / kexec-tools: to first line x{pf / kf:.2f} ({pf - kf:+.2f} s), "
          f"to /init x{pi / ki:.2f} ({pi - ki:+.2f} s){target}")


if __name__ == "__main__":
    sys.exit(main())

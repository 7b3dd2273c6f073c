#!/usr/bin/env python3
"""pykexec's arm64 user mode (kexec_load + its own device tree and purgatory) vs Debian's
kexec-tools ``kexec -l``, inside the arm64 QEMU guest (TCG), in one chain of kexec'd
kernels started by one QEMU boot.

The guest is tests/vm/arm64.py's: sid's 7.x arm64 Image under
``qemu-system-aarch64 -M virt`` with the harness's default ``-cpu``
(``max,pauth-impdef=on``, or ``$PYKEXEC_VM_ARM64_CPU``), trixie's arm64
Python 3.13 running pykexec, and Debian's kexec-tools (kexec_load: Debian's
arm64 kernels have no ``KEXEC_FILE``) called by its full path.  Both loaders
load the same files: the guest's own Image (``/vm/Image``, 48 MB), the same
initrd (64.3 MB, below) and the same command line.

(a) **load**: in the first kernel, ``pykexec load --mode user`` and
    ``kexec -l`` load them alternately, RUNS times each; each load is followed
    by ``kexec -u`` (not measured).  Per run: wall time of the whole process
    (``time.perf_counter`` around spawn..reap) and its peak RSS (``ru_maxrss``
    from ``os.wait4``; benchmarks/vmmeasure.py).  Both hash every segment in
    user space for their purgatory (pykexec with OpenSSL's SHA-256, kexec-tools
    with its own C code).  Printed beside them, measured once: ``python3 -c
    pass``, ``pykexec --version`` (start-up) and hashlib's SHA-256 of the Image
    and the initrd, to show where pykexec's time goes.

(b) **exec -> next kernel's first console line**: the kernel then kexecs
    itself 2*RUNS times, alternately loaded by pykexec (odd hops, our
    purgatory) and kexec-tools (even hops, its purgatory); each kernel of the
    chain rebuilds the initrd, loads the next kernel with one loader, and calls
    reboot(LINUX_REBOOT_CMD_KEXEC) itself (ctypes, the same for both loaders).
    The initrd is the guest's own initramfs (~24 MB: Python, pykexec,
    kexec-tools) followed by an archive holding the Image gzip'd on the host
    (each kernel of the chain inflates it back to the same ``/vm/Image``
    before loading) and that initramfs, so every kernel can go on.  The next
    kernel's command line is ``console=ttyAMA0 earlycon=pl011,0x9000000
    panic=-1 stage=N`` for both loaders: ``earlycon`` makes the new kernel
    print ``Booting Linux on physical CPU`` on QEMU virt's PL011 from its very
    start (no ``quiet``).

    Method as benchmarks/bench_vm_usermode.py's (whose ``hops`` reads the
    log): QEMU's serial output is read through a pipe on the host and each
    line stamped with ``time.monotonic()`` when its first byte arrives
    (tests/vm/usermode_support.py: ``boot_stamped_arm64``).  Before the exec
    the guest raises the console log level to 8, so the old kernel prints
    ``kexec_core: Starting new kernel`` (kernel_kexec(), after device
    shutdown, just before machine_kexec()).  The interval runs from that line
    to the first line of the new kernel (one without a printk time stamp, or
    with one smaller than the old kernel's), so it holds
    arm64_relocate_new_kernel's copy of the segments, the purgatory (SHA-256
    of every segment: ours with the SHA-2 instructions, kexec-tools' in
    portable C with the MMU and so the caches off), and the new kernel's
    start up to its first message; only the purgatory differs between the
    loaders.  The time to ``Linux version`` and to the new kernel's /init
    (``stage-begin``) are printed too.  Host timing of a TCG guest: every
    number also carries the host's load; the ratios are what is meaningful.

    ``--same-work`` (default): before each hop's load the kernel also runs the
    other loader's load (then ``kexec -u``), so the kernel before every hop
    ran the same programs (see bench_vm_usermode.py for why).

(c) **crash load**: the first kernel boots with ``crashkernel=CRASH`` (256M);
    after (a), ``pykexec load --crash --mode user`` and ``kexec -p`` load the
    same Image, initrd and a capture command line into the crash region
    alternately, RUNS times each, each followed by an unmeasured ``kexec -p
    -u``.  Measured as in (a): wall time and peak RSS of the whole process.
    Beside the Image and the initrd, both build an ELF core header of the
    first kernel's memory and a device tree with ``linux,elfcorehdr`` and
    ``linux,usable-memory-range``.  The hops of (b) boot without a crash
    region.

A full run (``--runs 3``: 6 loads and 6 crash loads in the first kernel, 6
hops each with both loads) takes about 8 minutes on the 2-core machine;
kexec-tools' purgatory is most of it (50-66 s per hop against 3 s for ours).

Run:  .venv/bin/python benchmarks/bench_vm_arm64.py [--runs 3] [--memory 2048] [--no-same-work] [--json]
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.vm import arm64  # noqa: E402
from tests.vm import usermode_support as um  # noqa: E402
from bench_vm_usermode import chain_arguments, chain_results, report_hops, report_loads  # noqa: E402
from vmmeasure import CHAIN, MEASURE, NEWC  # noqa: E402

#: QEMU virt's PL011 (the new kernel's early console)
EARLYCON = "earlycon=pl011,0x9000000"
#: the first kernel's crash region, for (c): the Image, the initrd and the small pieces fit
CRASH = "256M"
#: where the host's gzip of the Image goes in the guest (inflated to /vm/Image by each kernel)
GUEST_IMAGE_GZ = "/vm/Image.gz"

GUEST = r'''
import ctypes, gzip, json, os, re, shutil, subprocess, tempfile, time

RUNS, HOPS, SAME_WORK = {runs}, {hops}, {same_work}
KT = "{kexec_tools}"
IMAGE, IMAGE_GZ = "{image}", "{image_gz}"
m = re.search(r"(?:^|\s)stage=(\d+)", open("/proc/cmdline").read())
STAGE = int(m.group(1)) if m else 1
NEXT_CMDLINE = "console={console} {earlycon} panic=-1 stage=%d" % (STAGE + 1)

{newc}

# the kernel of the chain's later stages: the Image carried gzip'd, inflated to the same bytes
if not os.path.exists(IMAGE):
    with gzip.open(IMAGE_GZ, "rb") as f, open(IMAGE, "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
mark("image-bytes", STAGE, os.path.getsize(IMAGE))

# the next kernel's initrd: this initramfs + (Image.gz, this initramfs), so the chain can go on
INITRD = "/tmp/next.img"
with open(INITRD, "wb") as out:
    with open("/vm/initrd.img", "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    out.write(b"\0" * (-out.tell() % 4))
    newc(out, [(IMAGE_GZ.lstrip("/"), IMAGE_GZ), ("vm/initrd.img", "/vm/initrd.img")])
mark("initrd-bytes", STAGE, os.path.getsize(INITRD))

def pykexec_load():
    return ["pykexec", "load", "--mode", "user", IMAGE, "--initrd", INITRD, "--command-line", NEXT_CMDLINE]

def kt_load():
    return [KT, "-l", IMAGE, "--initrd", INITRD, "--command-line", NEXT_CMDLINE]

CAPTURE_CMDLINE = "console={console} panic=-1 nr_cpus=1 stage=capture"
CRASH_LOADS = (("pykexec load --crash --mode user", ["pykexec", "load", "--crash", "--mode", "user", IMAGE,
                                                     "--initrd", INITRD, "--command-line", CAPTURE_CMDLINE]),
               ("kexec -p", [KT, "-p", IMAGE, "--initrd", INITRD, "--command-line", CAPTURE_CMDLINE]))

{measure}

PEER = "kexec -l"

def stage1_extra():
    # context, once: the interpreter alone, pykexec's start-up, and the SHA-256 of the two files
    # (what both loaders hash) by the guest's OpenSSL through hashlib
    context = {{name: measure(argv) for name, argv in (
        ("python3 -c pass", ["python3", "-c", "pass"]),
        ("pykexec --version", ["pykexec", "--version"]),
        ("python3 sha256 Image+initrd", ["python3", "-c", "import hashlib, sys; "
                                         "[hashlib.file_digest(open(p, 'rb'), 'sha256') for p in sys.argv[1:]]",
                                         IMAGE, INITRD]))}}
    mark("bench-context", json.dumps(context))
    # (c) crash loads into the crash region, alternately, each unloaded (not measured)
    crash = {{}}
    for i in range(RUNS):
        for name, argv in CRASH_LOADS:
            r = measure(argv)
            r["loaded"] = open("/sys/kernel/kexec_crash_loaded").read().strip()
            crash.setdefault(name, []).append(r)
            subprocess.run([KT, "-p", "-u"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mark("bench-crash", json.dumps(crash))


{chain}
'''


def image_gz(image: Path, out: Path) -> Path:
    """The Image gzip'd (level 6, no name or mtime), for the chain's initrd to carry."""
    with open(image, "rb") as f, open(out, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0) as z:
        shutil.copyfileobj(f, z, 1 << 20)
    return out


def main(argv: list[str] | None = None) -> int:
    args = chain_arguments(__doc__, argv)

    t_start = time.monotonic()
    count = 2 * args.runs
    arm64.prepare()
    g = arm64.Guest("bench-vm-arm64")
    g.embed(GUEST_IMAGE_GZ, image_gz(g.kernel, g.dir / "Image.gz"))
    script = arm64.py_script(GUEST.format(newc=NEWC, chain=CHAIN,
        measure=MEASURE, runs=args.runs, hops=count, kexec_tools=arm64.GUEST_KEXEC_TOOLS,
        same_work=args.same_work, image=arm64.GUEST_IMAGE, image_gz=GUEST_IMAGE_GZ,
        console=arm64.CONSOLE, earlycon=EARLYCON))
    for stage in range(1, count + 2):
        g.stage(stage, script)
    boot = um.boot_stamped_arm64(g, f"crashkernel={CRASH}", memory=args.memory,
                                 timeout=300 + 120 * args.runs + (240 if args.same_work else 180) * count)
    serial = boot.serial
    loads, chain = chain_results(boot, count)
    wall = time.monotonic() - t_start
    crash = json.loads(serial.value("bench-crash"))
    if args.json:
        print(json.dumps({"load": loads, "context": json.loads(serial.value("bench-context")), "crash": crash,
                          "hops": chain, "qemu_seconds": serial.seconds, "wall_seconds": wall},
                         indent=1))

    failed = [(k, r) for k, v in (*loads.items(), *crash.items()) for r in v if r["rc"] != 0 or r.get("loaded") == "0"]
    for k, r in failed:
        print(f"FAILED {k}: rc={r['rc']} {r['err'].strip()}", file=sys.stderr)

    sizes = {v.split()[1] for v in serial.values("initrd-bytes")}
    images = {v.split()[1] for v in serial.values("image-bytes")}
    print(f"guest: {args.memory} MiB, TCG (-cpu {os.environ.get('PYKEXEC_VM_ARM64_CPU', arm64.DEFAULT_CPU)}), "
          f"{serial.value('kexec-tools')}, Image {', '.join(sorted(images))} bytes, "
          f"initrd {', '.join(sorted(sizes))} bytes, {args.runs} runs each; "
          f"QEMU {serial.seconds:.0f} s, whole benchmark {wall:.0f} s")
    print()
    report_loads(loads, "kexec -l", "  (target: wall <= 1.5x)")
    context = json.loads(serial.value("bench-context"))
    for key, r in context.items():
        print(f"  {key:<26} {r['wall']:8.2f} {'(once)':>15} {r['utime']:8.2f} {r['stime']:7.2f} "
              f"{r['maxrss_kib'] / 1024:13.1f}")
    print()
    report_loads(crash, "kexec -p", title=f"(c) crash load (crashkernel={CRASH})",
                 ours="pykexec load --crash --mode user")
    print()
    report_hops(chain, "  (target: first line <= 1.0x)")
    print(f"serial log with host stamps: {g.dir / 'serial.stamped'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

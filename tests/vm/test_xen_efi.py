"""Xen's EFI load types from dom0 (issue 18), on XenServer's Xen built from source, under QEMU (TCG).

XenServer's Xen 4.20 (``xenserver-next/xen`` 19b98a02d5, :func:`material.xenserver_xen`) is booted
as test_xen_dom0.py boots Debian's 4.17: QEMU's Multiboot loader, ``crashkernel=512M@1G``, dom0 =
bookworm's generic kernel with the harness's initramfs.  Each scenario observes the next kernel:

* lockdown and CRASH_EFI (issue scenarios 3 and 1, one boot, Xen with ``lockdown``): a
  ``KEXEC_TYPE_CRASH`` load (``--target xen``, our purgatory) is refused by Xen in one line
  naming lockdown; ``--target xen-efi --crash`` loads; ``load --crash`` without ``--target``
  says Xen is in lockdown and loads with CRASH_EFI; a dom0 process holds the kdump pattern,
  dom0 panics, Xen runs its own purgatory into the capture kernel, whose /proc/vmcore holds
  the pattern and whose command line is ours plus ``elfcorehdr=``;
* DEFAULT_EFI (issue scenario 2): a load with a marker and an initrd token, then exec: Xen
  takes and executes it, but its own purgatory spins (a digest taken too early; see the
  scenario), which the scenario observes through QEMU's monitor.

Scenario 4 (Debian's 4.17 refuses the EFI types, the crash image stays) runs in
test_xen_dom0.py's kdump boot, which already holds a crash image.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from . import harness as h
from . import usermode_support as um
from .kdump_pattern import PANIC, SCANNER, add_holder
from pykexec.plan.xen import XENSERVER_PURGATORY_MEMSZ

from .test_xen_dom0 import (CRASH_AREA, DOM0_CMDLINE, XEN_MEMORY, XEN_SETUP, bare_metal_next,
                            xen_guest)

pytestmark = pytest.mark.vm

XEN_CMDLINE = "console=com1 com1=115200,8n1 dom0_mem=1024M dom0_max_vcpus=1 crashkernel=512M@1G"
TIMEOUT = 900


def boot_xenserver(g: h.Guest, *, xen_cmdline: str = XEN_CMDLINE, timeout: float = TIMEOUT,
                   extra_args: tuple = ()) -> h.Serial:
    """XenServer's Xen (the ELF QEMU's Multiboot loader takes as it is), dom0 as in test_xen_dom0."""
    inner = g.initrd()
    g.embedded.file(h.GUEST_VMLINUZ, g.kernel)
    g.embedded.file(h.GUEST_INITRD, inner)
    emb = g.embedded.write_file(g.dir / "embed.cpio", compress=False)
    full = h.atomic_write(g.dir / "boot-initrd.img", lambda f: h.concat([inner, emb], f))
    try:
        xen = h.material.xenserver_xen()
    except RuntimeError as e:
        raise h.VmError(str(e)) from e
    with um.qemu_cpu(um.XEN_CPU):
        return h.run_qemu(kernel=xen, initrd=f"{um.generic_kernel()} {DOM0_CMDLINE},{full}",
                          append=xen_cmdline, memory=XEN_MEMORY, timeout=timeout, log_path=g.dir / "serial.log",
                          scenario=g.scenario, extra_args=extra_args)


def expect_xenserver_dom0(serial: h.Serial) -> None:
    """Xen 4.20 started dom0 with its crash area.  (Its "Lockdown mode is ..." line is printed while
    parsing the command line, before the console exists, and never reaches the serial port: the
    lockdown scenario sees lockdown in what Xen refuses.)"""
    # this Xen stamps its console lines: "(XEN) [   3.797920] *** Building a PV Dom0 ***"
    text = re.sub(r"^\(XEN\) \[[^]]*\] ", "(XEN) ", serial.text.replace("\r", ""), flags=re.M)
    for needle in ("(XEN) Xen version 4.20", "(XEN) *** Building a PV Dom0 ***",
                   f"(XEN) Kdump: 512MB (524288kB) at {CRASH_AREA[0]:#x}"):
        if needle not in text:
            serial.fail(f"{needle!r} is not on Xen's console")
    if serial.value("hypervisor").strip() != "xen" or "privcmd" not in serial.value("privcmd"):
        serial.fail("stage 1 does not run in dom0 with /dev/xen/privcmd")


def test_lockdown_then_crash_efi_kdump(vm_material):
    marker, seed = h.token(), h.token()
    capture_cmdline = f"console=ttyS0 stage=2 marker={marker} panic=-1 irqpoll nr_cpus=1 reset_devices"
    g = xen_guest("xenserver-efi-kdump")
    pattern = add_holder(g, seed)
    load = f'--crash /vm/vmlinuz --initrd /vm/initrd.img --command-line "{capture_cmdline}"'
    g.stage(1, h.sh_script(XEN_SETUP + f"""
run classic pykexec load --crash --target xen /vm/vmlinuz --command-line "console=ttyS0 classic"
run explicit pykexec load {load} --target xen-efi --json
run status1 pykexec status --json
run auto pykexec load {load} --json || exit 1
run status2 pykexec status --json
""" + PANIC))
    g.stage(2, h.py_script(pattern + '\nmark("cmdline", open("/proc/cmdline").read().strip())\n' + SCANNER))
    serial = boot_xenserver(g, xen_cmdline=XEN_CMDLINE + " lockdown")
    expect_xenserver_dom0(serial)
    err = serial.values("classic.err")
    if serial.values("classic.rc") != ["2"] or len(err) != 1 or "EPERM" not in err[0] or "lockdown" not in err[0]:
        serial.fail(f"Xen in lockdown should refuse KEXEC_TYPE_CRASH, in one line naming lockdown:\n"
                    f"{serial.command('classic')}")
    for name in ("explicit", "auto"):
        h.expect_ok(serial, name)
        plan = json.loads(serial.lines(f"{name}.out"))["plan"]
        if (plan["target"], plan["kexec_type"]) != ("xen-efi", "KEXEC_TYPE_CRASH_EFI") or \
                any(s["role"] == "purgatory" for s in plan["segments"]):
            serial.fail(f"{name}: not a CRASH_EFI load without a purgatory of ours:\n{serial.command(name)}")
    said = " ".join(serial.values("auto.err"))
    if "lockdown" not in said or "KEXEC_TYPE_CRASH_EFI" not in said:
        serial.fail(f"load without --target did not say it picked the EFI type:\n{serial.command('auto')}")
    # Xen's kexec_status answers the slot-position bit (KEXEC_FLAG_CRASH_POS), which every load and
    # unload toggles: after one load it reads 1, after a second load 0 although an image is held
    # (docs/xen.md).  The crash below shows the image is there.
    crash_loaded = (h.status_json(serial, "status1")["crash_loaded"], h.status_json(serial, "status2")["crash_loaded"])
    if crash_loaded != (True, False):
        serial.fail(f"Xen's kexec_status after one and two CRASH_EFI loads read {crash_loaded}, expected "
                    "(True, False): the parity of the loads")
    serial.expect_in_order("stage-begin 1", "holder-ready", "crashing", "stage-begin 2", "pattern",
                           "stage-end 2 rc=0")
    words = serial.value("cmdline").split()
    rest = [w for w in words if not w.startswith("elfcorehdr=")]
    if rest != capture_cmdline.split() or len(words) != len(rest) + 1:
        serial.fail(f"capture kernel cmdline {words}: expected {capture_cmdline!r} plus one elfcorehdr=")
    if serial.value("pattern") != "FOUND":
        serial.fail(f"the pattern is not in /proc/vmcore: pages found {serial.value('pages-found')}")


def read_registers_after(log: Path, line: str, monitor: Path, out: Path, *, settle: float,
                         timeout: float) -> threading.Thread:
    """Once ``line`` is on the console and ``settle`` seconds have passed, ask QEMU's monitor
    for the CPU's registers (into ``out``) and end the run: where a machine that prints nothing
    more is spinning."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and line.encode() in log.read_bytes():
                break
            time.sleep(1)
        else:
            return
        time.sleep(settle)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(os.fspath(monitor))
            sock.settimeout(30)
            for command, until in ((b"", b"(qemu)"), (b"info registers\n", b"RIP=")):
                sock.sendall(command)
                got = b""
                while until not in got or not got.rstrip().endswith(b"(qemu)"):
                    got += sock.recv(65536)
            out.write_bytes(got)
            sock.sendall(b"quit\n")
            try:    # stay connected until QEMU has gone: a monitor closed at once may drop the quit
                while sock.recv(65536):
                    pass
            except OSError:
                pass
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_default_efi_exec(vm_material):
    """DEFAULT_EFI on XenServer's Xen: the load is taken and executed, but Xen's purgatory spins.

    Measured: after "Executing kexec image on cpu0" nothing more is printed, and the CPU sits in
    Xen's purgatory (the first 16 KiB of the crash area, where Xen put it): it compares the
    segments against a digest Xen took over their destinations at load time, before a default
    image's segments are copied there (``kimage_purgatory_calc_one_digest`` maps
    ``dest_maddr``), finds a mismatch and loops forever (docs/xen.md).  The scenario fails if the
    next kernel boots, so a fixed Xen is noticed."""
    g = xen_guest("xenserver-efi-default")
    _, next_cmdline = bare_metal_next(g)
    g.stage(1, h.sh_script(XEN_SETUP + f"""
run load pykexec load --target xen-efi /vm/vmlinuz --initrd /vm/next.img --command-line "{next_cmdline}" --json
run status pykexec status --json
run exec pykexec exec
mark exec-returned
"""))
    monitor, registers = g.dir / "monitor.sock", g.dir / "registers.txt"
    watcher = read_registers_after(g.dir / "serial.log", "Executing kexec image on cpu0", monitor, registers,
                                   settle=20, timeout=TIMEOUT * 3)
    serial = boot_xenserver(g, extra_args=("-monitor", f"unix:{monitor},server=on,wait=off"))
    watcher.join(timeout=60)
    expect_xenserver_dom0(serial)
    h.expect_ok(serial, "load")
    plan = json.loads(serial.lines("load.out"))["plan"]
    if plan["kexec_type"] != "KEXEC_TYPE_DEFAULT_EFI" or any(s["role"] == "purgatory" for s in plan["segments"]):
        serial.fail(f"not a DEFAULT_EFI load without a purgatory of ours:\n{serial.command('load')}")
    if not h.status_json(serial, "status")["loaded"]:
        serial.fail("Xen's kexec_status does not report the image loaded")
    if serial.has("exec-returned"):
        serial.fail(f"pykexec exec returned:\n{serial.command('exec')}")
    after = serial.text.split("Executing kexec image on cpu0", 1)[-1]
    if serial.has("stage-begin 2") or "Linux version" in after:
        serial.fail("the next kernel booted from DEFAULT_EFI: XenServer's Xen takes its purgatory's "
                    "digest right now; make this scenario expect the marker and the token")
    rip = re.search(r"RIP=([0-9a-f]{16})", registers.read_text() if registers.exists() else "")
    if rip is None:
        serial.fail(f"no registers from QEMU's monitor after the exec ({registers})")
    at = int(rip.group(1), 16)
    if not CRASH_AREA[0] <= at < CRASH_AREA[0] + XENSERVER_PURGATORY_MEMSZ:
        serial.fail(f"after the exec the CPU is at {at:#x}, not in Xen's purgatory at {CRASH_AREA[0]:#x}")

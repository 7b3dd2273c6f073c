"""The 32-bit boot protocol in QEMU: kexec from Linux into Debian's memtest86+.

memtest86+x64.bin is a bzImage of protocol 2.12 with XLF_KERNEL_64 but not
XLF_CAN_BE_LOADED_ABOVE_4G and not relocatable: the kernel's kexec_file loader
(bzImage64_probe) refuses it, and kexec-tools boots it through the 32-bit entry
at 0x100000.  In one boot the guest shows that

* ``load --mode auto`` falls back to kexec_load and loads the segments that
  ``plan --target linux-user`` placed (the dry runs and file mode's refusal are
  tests/real/test_boot32_real.py's), and after ``exec`` memtest86+
  runs: it writes to the serial port only when ``console=ttyS0`` reached it
  through the command line pykexec passed, and the memory it reports comes from
  the e820 map in the boot_params pykexec built (compared with the RAM the
  firmware's map gave the first kernel, /sys/firmware/memmap).

memtest86+ never powers off: the run ends when its first test starts.
"""

from __future__ import annotations

import json
import re

import pytest

from tests import material

from . import harness as h

pytestmark = pytest.mark.vm

CMDLINE = "console=ttyS0,115200"

STAGE1 = '''
import glob
def ram_mib():
    total = 0
    for d in glob.glob("/sys/firmware/memmap/*"):
        if open(d + "/type").read().strip() == "System RAM":
            total += int(open(d + "/end").read(), 16) + 1 - int(open(d + "/start").read(), 16)
    return total / (1 << 20)
mark("firmware-ram-mib", "%.3f" % ram_mib())
run("plan", "pykexec", "plan", "--target", "linux-user", "--command-line", {cmdline!r}, "--json", "/vm/memtest.bin")
if run("load", "pykexec", "load", "--mode", "auto", "--command-line", {cmdline!r}, "--json",
       "/vm/memtest.bin").returncode:
    raise SystemExit(1)
mark("sysfs-loaded", open("/sys/kernel/kexec_loaded").read().strip())
run("exec", "pykexec", "exec")
mark("exec-returned")
'''


def _json(serial: h.Serial, name: str) -> dict:
    h.expect_ok(serial, name)
    return json.loads(serial.lines(name + ".out"))


def _placed(plan: dict) -> list:
    return [(s["role"], s["mem"], s["memsz"]) for s in plan["segments"]]


def test_memtest86_through_the_32_bit_entry(vm_material):
    image = material.memtest86_bin()
    version = material.package_of(image)[1].split("-")[0]          # 6.10-4 -> 6.10
    g = h.Guest("boot32-memtest86")
    g.embed("/vm/memtest.bin", image)
    g.stage(1, h.py_script(STAGE1.format(cmdline=CMDLINE)))
    serial = g.boot(timeout=240, until="Address test")

    loaded = _json(serial, "load")
    planned, used = _placed(_json(serial, "plan")), _placed(loaded["plan"])
    if planned != used:
        serial.fail(f"plan --target linux-user placed {planned}, the load {used}")
    if ("kernel", "0x100000") not in [(r, m) for r, m, _ in planned]:
        serial.fail(f"memtest86+ is not relocatable: its kernel belongs at 0x100000, planned {planned}")
    if loaded["syscall"] != "kexec_load":
        serial.fail(f"--mode auto did not fall back to kexec_load: {loaded['syscall']}, {loaded['attempts']}")
    if serial.value("sysfs-loaded") != "1":
        serial.fail("/sys/kernel/kexec_loaded is not 1 after the load")
    if serial.has("exec-returned"):
        serial.fail(f"`pykexec exec` returned:\n{serial.command('exec')}")
    after = serial.text[serial.text.find("exec.rc") if serial.has("exec.rc") else 0:]
    if f"Memtest86+ v{version}" not in after:
        serial.fail(f"memtest86+ v{version} did not report on the serial console after the exec")
    found = re.search(r"Memory\s*:\s*(\d+)MB", after)
    ram = float(serial.value("firmware-ram-mib"))
    if found is None or abs(int(found.group(1)) - ram) > 1:
        serial.fail(f"memtest86+ reports {found and found.group(0)!r}; the firmware's map has {ram:.1f} MiB of RAM")

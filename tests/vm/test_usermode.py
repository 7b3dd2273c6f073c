"""User-mode loading (kexec_load with pykexec's purgatory) in QEMU.

The plain bzImage load is tests/vm/test_bzimage.py[user]; here:

* a load whose segment is corrupted after the purgatory's digests were taken:
  the purgatory must name the segment, say "refusing to boot" on the serial
  port, and never enter the kernel (it resets, so QEMU ends at once);
* kdump through kexec_load: ``pykexec load --mode user --crash``, a panic, and
  the capture kernel finds a 4 MiB pattern of the crashed kernel in /proc/vmcore;
* the vmlinux ELF that ``pykexec extract`` pulls out of the bzImage (on the
  host), loaded with ``pykexec load --mode user`` and booted.
"""

from __future__ import annotations

import inspect

import pytest

from tests.usermode_helpers import corrupted

from . import harness as h
from . import kdump_pattern as kp
from . import usermode_support as um

pytestmark = pytest.mark.vm


# --------------------------------------------------------------------------
# 2. a corrupted segment: the purgatory refuses

CORRUPT_STAGE1 = '''
import subprocess
from pykexec.api import prepare_file
from pykexec.backends.linux.syscalls import LinuxSyscalls
from pykexec.backends.linux.user import UserBackend
from pykexec.boot.usermode import build_user_load
from pykexec.machine import snapshot
{corrupted}

ROLE, OFFSET, CMDLINE = {role!r}, {offset!r}, {cmdline!r}
subprocess.run("cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img", shell=True, check=True)
with open("/tmp/stage2.img", "rb") as f:
    initrd = f.read()
good = build_user_load(prepare_file("/vm/vmlinuz"), initrd=initrd, cmdline=CMDLINE, crash=False,
                       machine=snapshot(), on_failure="reset")
bad = corrupted(good, ROLE, OFFSET)
seg, orig = bad.segment(ROLE), good.segment(ROLE)
at = OFFSET % len(seg.buf)
same_elsewhere = seg.buf[:at] == orig.buf[:at] and seg.buf[at + 1:] == orig.buf[at + 1:]
changed = [at] if seg.buf[at] != orig.buf[at] and same_elsewhere else []
checked = [s.role for s in bad.plan.segments if s.role != "purgatory"]
mark("corrupt", ROLE, "region=%02x" % checked.index(ROLE), "mem=%016x" % seg.mem,
     "bytes=%d" % len(seg.buf), "changed=%s" % changed)
mark("segments", *[f"{{s.role}}@{{s.mem:#x}}" for s in bad.plan.segments])
UserBackend(LinuxSyscalls()).execute(bad)
mark("loaded", open("/sys/kernel/kexec_loaded").read().strip())
run("exec", "pykexec", "exec")
mark("exec-returned")
'''


@pytest.mark.parametrize("role,offset", [("kernel", 0), ("initrd", -1)],
                         ids=["kernel-first-byte", "initrd-last-byte"])
def test_purgatory_refuses_corrupted_segment(vm_material, role, offset):
    marker, tok = h.token(), h.token()
    cmdline = f"console=ttyS0 stage=2 marker={marker}"
    g = h.Guest(f"usermode-corrupt-{role}")
    h.add_token_archive(g, tok)
    g.stage(1, h.py_script(CORRUPT_STAGE1.format(role=role, offset=offset, cmdline=cmdline,
                                                    corrupted=inspect.getsource(corrupted))))
    g.stage(2, h.STAGE2_REPORT)
    serial = g.boot(timeout=240)

    words = serial.value("corrupt").split()
    if serial.value("loaded") != "1":
        serial.fail("/sys/kernel/kexec_loaded is not 1 after kexec_load of the corrupted load")
    if words[-1] == "changed=[]":
        serial.fail(f"corrupted(load, {role!r}) changed no byte: {words}")
    region, mem = words[1].split("=")[1], words[2].split("=")[1]
    # the reset ends QEMU; nothing of the next kernel may run
    if any(serial.has(n) for n in ("cmdline", "token")) or f"marker={marker}" in serial.text \
            or any(v.startswith("2 ") for v in serial.values("stage-begin")):
        serial.fail("the next kernel ran although a segment was corrupted")
    if serial.has("exec-returned"):
        serial.fail(f"`pykexec exec` returned:\n{serial.command('exec')}")
    text = serial.text.replace("\r", "")
    mismatch = [ln for ln in text.splitlines() if "pykexec purgatory: segment" in ln]
    want = f"pykexec purgatory: segment {region} [0x{mem}+"
    if len(mismatch) != 1 or want not in mismatch[0] or "SHA-256 mismatch" not in mismatch[0]:
        serial.fail(f"expected one purgatory line naming {role} ({want}... SHA-256 mismatch), got {mismatch}")
    for needle in ("pykexec purgatory: verification failed", "pykexec purgatory: refusing to boot",
                   "pykexec purgatory: resetting"):
        if needle not in text:
            serial.fail(f"{needle!r} not on the console")
    if text.index("pykexec purgatory: refusing to boot") < text.index(mismatch[0]):
        serial.fail("'refusing to boot' came before the mismatch report")


# --------------------------------------------------------------------------
# 3. kdump through kexec_load

# the capture kernel unpacks the full guest initramfs (~100 MB) into its own memory
CRASHKERNEL = "512M"
KDUMP_MEMORY = 1536


def test_usermode_kdump_vmcore_holds_pattern(vm_material):
    marker, seed = h.token(), h.token()
    capture_cmdline = f"console=ttyS0 stage=2 marker={marker} panic=-1 irqpoll nr_cpus=1 reset_devices"
    g = kp.kdump_guest("usermode-kdump", seed, "--mode user ", capture_cmdline)
    serial = g.boot(f"crashkernel={CRASHKERNEL}", memory=KDUMP_MEMORY, timeout=300)

    h.expect_ok(serial, "load")
    if "loaded with kexec_load" not in serial.lines("load.out"):
        serial.fail(f"`pykexec load --mode user --crash` did not use kexec_load:\n{serial.command('load')}")
    if serial.value("crash-loaded") != "1":
        serial.fail("/sys/kernel/kexec_crash_loaded is not 1 after `pykexec load --mode user --crash`")
    kp.expect_dump(serial, capture_cmdline, "pykexec --mode user")


# --------------------------------------------------------------------------
# 4. the vmlinux ELF extracted by pykexec, loaded by kexec_load

def test_usermode_vmlinux_elf(vm_material):
    marker, tok = h.token(), h.token()
    cmdline = f"console=ttyS0 stage=2 marker={marker}"
    g = h.Guest("usermode-vmlinux")
    vmlinux = um.extract_vmlinux(g.kernel, g.dir / "extract")
    g.embed("/vm/vmlinux", vmlinux)
    h.add_token_archive(g, tok)
    g.stage(1, h.sh_script(f"""
cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img
run load pykexec load --mode user /vm/vmlinux --initrd /tmp/stage2.img --command-line "{cmdline}" || exit 1
mark sysfs-loaded "$(cat /sys/kernel/kexec_loaded)"
rm -f /vm/vmlinux
run exec pykexec exec
mark exec-returned
"""))
    g.stage(2, h.STAGE2_REPORT)
    serial = g.boot(memory=1280, timeout=240)
    h.expect_ok(serial, "load")
    out = serial.lines("load.out")
    if "loaded with kexec_load" not in out or "elf" not in out:
        serial.fail(f"expected an ELF loaded with kexec_load:\n{serial.command('load')}")
    if serial.value("sysfs-loaded") != "1":
        serial.fail("/sys/kernel/kexec_loaded is not 1 after `pykexec load --mode user vmlinux`")
    h.expect_stage2(serial, cmdline=cmdline, token_value=tok)

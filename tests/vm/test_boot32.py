"""The 32-bit boot protocol and the real-mode entry in QEMU.

First boot, one chain of kexecs through ``pykexec load --mode auto``, both at the 32-bit entry:

1. The guest's own kernel with XLF_CAN_BE_LOADED_ABOVE_4G cleared in its
   header (as a kernel before protocol 2.12 has it): bzImage64_probe refuses
   it, so auto goes to kexec_load and the purgatory enters Linux's startup_32
   (boot.rst "32-bit Boot Protocol": CS 0x10, DS 0x18, %esi = boot_params,
   paging off).  The second kernel shows the command line and the initrd
   (a token only its initrd holds) it was given.
2. From there, memtest86+x64.bin: a bzImage of protocol 2.12 with
   XLF_KERNEL_64 but not XLF_CAN_BE_LOADED_ABOVE_4G, not relocatable, so its
   kernel goes to 0x100000 (kexec-tools boots it the same way).  pykexec loads
   the segments ``plan --target linux-user`` placed; memtest86+ writes to the
   serial port only when ``console=ttyS0`` reached it through the command line
   pykexec passed, and the memory it reports comes from the e820 map in the
   boot_params (compared with the RAM in the firmware's own map, read by the
   first kernel from /sys/firmware/memmap).

Second boot: Linux, then Debian's iPXE ``ipxe.lkrn`` (protocol 2.07, ``code32_start`` 0), which
starts only through its real-mode setup code and the BIOS: the purgatory returns to real mode with
the BIOS's interrupt table and enters it at setup + 0x200.  Its command line is an iPXE script that
sets a variable and echoes it; iPXE writes through the BIOS, and SeaBIOS copies that to ttyS0.  The
echoed line, with the variable expanded, appears nowhere in what the first kernel printed.

Third boot: Linux, then syslinux's memdisk (protocol 2.03; its ``code32_start`` is its own code, not
Linux's entry, so it too starts in real mode) with a floppy image as its initrd.  memdisk reports the
ramdisk and command line it got, hooks INT 13h and boots the floppy, whose boot sector reads its second
sector through INT 13h and writes it to COM1: a line stored only there, each byte shifted by one.

The dry runs and file mode's refusal are tests/real/test_boot32_real.py's.
memtest86+, iPXE and memdisk's floppy never power off: each run ends at the line it waits for.
"""

from __future__ import annotations

import json
import re
import struct

import pytest

from tests import material

from . import harness as h

pytestmark = pytest.mark.vm

MEMTEST_CMDLINE = "console=ttyS0,115200"

STAGE1 = '''
import glob, struct, subprocess
def ram_mib():
    total = 0
    for d in glob.glob("/sys/firmware/memmap/*"):
        if open(d + "/type").read().strip() == "System RAM":
            total += int(open(d + "/end").read(), 16) + 1 - int(open(d + "/start").read(), 16)
    return total / (1 << 20)
mark("firmware-ram-mib", "%.3f" % ram_mib())
kernel = bytearray(open("/vm/vmlinuz", "rb").read())
xlf, = struct.unpack_from("<H", kernel, 0x236)
struct.pack_into("<H", kernel, 0x236, xlf & ~0x2)        # XLF_CAN_BE_LOADED_ABOVE_4G off
open("/tmp/vmlinuz32", "wb").write(kernel)
subprocess.run("cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img", shell=True, check=True)
if run("load1", "pykexec", "load", "--mode", "auto", "/tmp/vmlinuz32", "--initrd", "/tmp/stage2.img",
       "--command-line", {cmdline!r}, "--json").returncode:
    raise SystemExit(1)
run("exec1", "pykexec", "exec")
mark("exec1-returned")
'''

def plan_load_exec(path: str, cmdline: str, n: str = "", initrd: str = "") -> str:
    """Guest lines: ``plan --target linux-user`` of ``path``, ``load --mode auto`` of it (as ``load<n>``),
    ``exec`` (as ``exec<n>``), and a mark should exec return.  ``initrd``: a file both are given."""
    files = f", '--initrd', {initrd!r}" if initrd else ""
    return f'''
run("plan", "pykexec", "plan", "--target", "linux-user", "--command-line", {cmdline!r}, "--json", {path!r}{files})
if run("load{n}", "pykexec", "load", "--mode", "auto", "--command-line", {cmdline!r}, "--json",
       {path!r}{files}).returncode:
    raise SystemExit(1)
run("exec{n}", "pykexec", "exec")
mark("exec{n}-returned")
'''


STAGE2 = '''
mark("cmdline", open("/proc/cmdline").read().strip())
mark("token", open("/vm/token").read().strip())
''' + plan_load_exec("/vm/memtest.bin", MEMTEST_CMDLINE, "2")


def _json(serial: h.Serial, name: str) -> dict:
    h.expect_ok(serial, name)
    return json.loads(serial.lines(name + ".out"))


def _placed(plan: dict) -> list:
    return [(s["role"], s["mem"], s["memsz"]) for s in plan["segments"]]


def _through_kexec_load(serial: h.Serial, name: str) -> dict:
    """The load's JSON, which must show that auto went to kexec_load and planned the 32-bit entry."""
    loaded = _json(serial, name)
    if loaded["syscall"] != "kexec_load" or not any("32-bit boot protocol" in n for n in loaded["plan"]["notes"]):
        serial.fail(f"{name}: not the 32-bit entry through kexec_load: {loaded['syscall']}, "
                    f"{loaded['attempts']}, {loaded['plan']['notes']}")
    return loaded


def test_linux_then_memtest86_through_the_32_bit_entry(vm_material):
    image = material.memtest86_bin()
    version = material.package_of(image)[1].split("-")[0]          # 6.10-4 -> 6.10
    marker, tok = h.token(), h.token()
    cmdline2 = f"console=ttyS0 stage=2 marker={marker}"
    g = h.Guest("boot32-linux-memtest86")
    g.host_file("/vm/memtest.bin", image)
    h.add_token_archive(g, tok)
    g.stage(1, h.py_script(STAGE1.format(cmdline=cmdline2)))
    g.stage(2, h.py_script(STAGE2))
    serial = g.boot(timeout=300, until="Address test")     # 1024 MiB: memtest86+ shows MB below 1 GiB

    # 1. Linux through startup_32
    _through_kexec_load(serial, "load1")
    if serial.has("exec1-returned"):
        serial.fail(f"the first `pykexec exec` returned:\n{serial.command('exec1')}")
    serial.expect_in_order("stage-begin 1", "stage-begin 2")
    if (serial.value("cmdline"), serial.value("token")) != (cmdline2, tok):
        serial.fail(f"the second kernel got {serial.value('cmdline')!r} and token {serial.value('token')!r}, "
                    f"expected {cmdline2!r} and {tok!r}")

    # 2. memtest86+ at 0x100000
    loaded = _through_kexec_load(serial, "load2")
    planned, used = _placed(_json(serial, "plan")), _placed(loaded["plan"])
    if planned != used:
        serial.fail(f"plan --target linux-user placed {planned}, the load {used}")
    if ("kernel", "0x100000") not in [(r, m) for r, m, _ in planned]:
        serial.fail(f"memtest86+ is not relocatable: its kernel belongs at 0x100000, planned {planned}")
    if serial.has("exec2-returned"):
        serial.fail(f"the second `pykexec exec` returned:\n{serial.command('exec2')}")
    after = serial.text[serial.text.rfind("exec2.") if serial.has("exec2.rc") else 0:]
    if f"Memtest86+ v{version}" not in after:
        serial.fail(f"memtest86+ v{version} did not report on the serial console after the second exec")
    found = re.search(r"Memory\s*:\s*(\d+)MB", after)
    ram = float(serial.value("firmware-ram-mib"))
    if found is None or abs(int(found.group(1)) - ram) > 1:
        serial.fail(f"memtest86+ reports {found and found.group(0)!r}; the firmware's map has {ram:.1f} MiB of RAM")


def test_linux_then_ipxe_through_the_real_mode_entry(vm_material):
    tok = h.token()
    said = f"pykexec-ipxe-{tok}-ok"
    cmdline = f"set t {tok} && echo pykexec-ipxe-${{t}}-ok"      # iPXE expands ${t}; our own output cannot
    g = h.Guest("real-mode-linux-ipxe")
    g.host_file("/vm/ipxe.lkrn", material.ipxe_lkrn())
    g.stage(1, h.py_script(plan_load_exec("/vm/ipxe.lkrn", cmdline)))
    serial = g.boot(timeout=240, until=said)

    loaded = _json(serial, "load")
    if loaded["syscall"] != "kexec_load" or not any("real-mode entry" in n for n in loaded["plan"]["notes"]):
        serial.fail(f"not the real-mode entry through kexec_load: {loaded['syscall']}, {loaded['plan']['notes']}")
    planned, used = _placed(_json(serial, "plan")), _placed(loaded["plan"])
    if planned != used:
        serial.fail(f"plan --target linux-user placed {planned}, the load {used}")
    if serial.has("exec-returned"):
        serial.fail(f"`pykexec exec` returned:\n{serial.command('exec')}")
    if said not in serial.text:
        serial.fail(f"iPXE did not run its command line: {said!r} is not on the console")


def _boot_floppy(said: str) -> bytes:
    """A 1.44 MB floppy image whose boot sector reads its own sector 2 through INT 13h and writes it to
    COM1.  Sector 2 holds ``said`` with each byte plus one, which the boot sector takes back off: the line
    appears on the console only when a disk served by INT 13h (memdisk's) was read and its code ran."""
    bpb = (b"\xeb\x3c\x90" + b"PYKEXEC " + struct.pack("<HBHBHHBHHHII", 512, 1, 1, 2, 224, 2880, 0xF0, 9, 18, 2, 0, 0)
           + b"\x00\x00\x29" + b"\x12\x34\x56\x78" + b"PYKEXEC    " + b"FAT12   ")
    code = bytes.fromhex(
        "fa 31c0 8ed8 8ec0 8ed0 bc007c fb"   # cli; ds = es = ss = 0; sp = 0x7c00; sti
        "b80102 b90200 30f6 bb007e cd13"     # INT 13h AH=2: one sector, C0 H0 S2 of drive DL, to 0:7e00
        "be007e 7303 be707c"                 # si = 0x7e00, or on carry (failed) the message at 0x7c70
        "baf803 ac 84c0 7405 fec8 ee ebf6"   # each byte until NUL, less one, out to COM1 (0x3f8)
        "f4 ebfd")                           # hlt forever
    failed = bytes(c + 1 for c in b"pykexec-memdisk-int13-failed\r\n") + b"\0"
    assert len(bpb) == 0x3E and len(bpb + code) == 0x70             # the offsets the code jumps to
    boot = (bpb + code + failed).ljust(510, b"\0") + b"\x55\xaa"
    sector2 = (bytes(c + 1 for c in said.encode() + b"\r\n") + b"\0").ljust(512, b"\0")
    return (boot + sector2).ljust(2880 * 512, b"\0")


def test_linux_then_memdisk_through_the_real_mode_entry(vm_material):
    """syslinux's memdisk (protocol 2.03, code32_start 0x100000 but not Linux's entry) starts only in
    real mode.  It takes its command line ("ro" and a token) and initrd (a floppy image) from the setup
    header pykexec filled, hooks INT 13h and boots the floppy, whose boot sector reads itself through it."""
    tok = h.token()
    said, cmdline = f"pykexec-memdisk-{tok}-ok", f"ro tag={h.token()}"
    g = h.Guest("real-mode-linux-memdisk")
    g.host_file("/vm/memdisk", material.syslinux_memdisk())
    g.file("/vm/floppy.img", _boot_floppy(said))
    g.stage(1, h.py_script(plan_load_exec("/vm/memdisk", cmdline, initrd="/vm/floppy.img")))
    serial = g.boot(timeout=240, until=said)

    loaded = _json(serial, "load")
    if loaded["syscall"] != "kexec_load" or not any("real-mode entry" in n and "memdisk" in n
                                                    for n in loaded["plan"]["notes"]):
        serial.fail(f"not memdisk's real-mode entry through kexec_load: {loaded['syscall']}, "
                    f"{loaded['plan']['notes']}")
    planned, used = _placed(_json(serial, "plan")), _placed(loaded["plan"])
    if planned != used:
        serial.fail(f"plan --target linux-user placed {planned}, the load {used}")
    if serial.has("exec-returned"):
        serial.fail(f"`pykexec exec` returned:\n{serial.command('exec')}")
    after = serial.text[serial.text.rfind("load.rc"):]           # exec runs next, and never returns
    initrd = next(int(mem, 16) for role, mem, _ in used if role == "initrd")
    # memdisk's setup.c: what it was given, and the floppy it makes of it, read-only as "ro" asked
    for line in (f"Ramdisk at {initrd:#010x}, length {2880 * 512:#010x}", f"command line: {cmdline}",
                 "Disk is fd0, 1440 K, C/H/S = 80/2/18 (FAT/FAT), EDD off, ro"):
        if line not in after:
            serial.fail(f"memdisk did not say {line!r} after the exec")
    if said not in after:
        serial.fail(f"the floppy's boot sector did not run through memdisk: {said!r} is not on the console")


# Linux kexecs Linux through kexec-tools' flags, given to the shim as a script would: --entry-32bit, then
# --real-mode.  `kexec -d` prints the segments and notes the load handed over.  Both next kernels get
# `earlyprintk=serial,... debug`: Linux's real-mode setup code (arch/x86/boot/main.c) then says "early
# console in setup code" on COM1, which only a real-mode entry runs ("quiet" after "debug" lowers the
# kernel's console log level again, so its messages do not break into the stage's lines).
ENTRY_STAGE1 = '''
cat /vm/initrd.img /vm/token.cpio > /tmp/stage2.img
run load1 kexec -d -l --entry-32bit /vm/vmlinuz --initrd=/tmp/stage2.img --append="{cmdline2}" || exit 1
mark exec1-next
run exec1 kexec -e
mark exec1-returned
'''

ENTRY_STAGE2 = '''
mark cmdline2 "$(cat /proc/cmdline)"
mark token2 "$(cat /vm/token)"
run load2 kexec -d -l --real-mode /vm/kernel2 --initrd=/vm/stage3.img --append="{cmdline3}" || exit 1
mark exec2-next
run exec2 kexec -e
mark exec2-returned
'''

ENTRY_STAGE3 = '''
mark cmdline3 "$(cat /proc/cmdline)"
mark token3 "$(cat /vm/token)"
'''

SETUP_CODE_SAYS = "early console in setup code"
# Its puts() writes each character to COM1 and through the BIOS (INT 10h), which SeaBIOS copies to COM1 too.
SETUP_CODE_LINE = re.compile("".join(f"{re.escape(c)}{{1,2}}" for c in SETUP_CODE_SAYS))


def _shim_loaded(serial: h.Serial, name: str, *notes: str) -> None:
    """``kexec -d -l`` succeeded through kexec_load, and its plan has each of ``notes``."""
    h.expect_ok(serial, name)
    said = serial.lines(name + ".err")
    if "with kexec_load" not in said or not all(n in said for n in notes):
        serial.fail(f"{name}: not {notes} through kexec_load:\n{said}")


def test_linux_through_the_shims_entry_flags(vm_material):
    tok2, tok3 = h.token(), h.token()
    early = "earlyprintk=serial,ttyS0,115200 debug quiet"
    cmdline2 = f"console=ttyS0 {early} stage=2 marker={h.token()}"
    cmdline3 = f"console=ttyS0 panic=-1 {early} stage=3 marker={h.token()}"
    g = h.Guest("entry-flags-linux")
    h.add_token_archive(g, tok2)
    g.host_file("/vm/kernel2", h.kernel())
    stage3 = [h.busybox_initramfs(g, 3, h.sh_script(ENTRY_STAGE3)),
              g.build_archive("token3.cpio", {"/vm/token": tok3 + "\n"})]
    g.host_file("/vm/stage3.img", h.concat_file(g.dir / "stage3.img", stage3))
    g.stage(1, h.sh_script(ENTRY_STAGE1.format(cmdline2=cmdline2)))
    g.stage(2, h.sh_script(ENTRY_STAGE2.format(cmdline3=cmdline3)))
    serial = g.boot(timeout=300)

    _shim_loaded(serial, "load1", "32-bit boot protocol")
    serial.expect_in_order("exec1-next", "stage-begin 2")
    if (serial.value("cmdline2"), serial.value("token2")) != (cmdline2, tok2):
        serial.fail(f"the second kernel got {serial.value('cmdline2')!r} and token {serial.value('token2')!r}")
    _shim_loaded(serial, "load2", "real-mode entry", "asked for")
    serial.expect_in_order("exec2-next", "stage-begin 3", "stage-end 3 rc=0")
    if (serial.value("cmdline3"), serial.value("token3")) != (cmdline3, tok3):
        serial.fail(f"the third kernel got {serial.value('cmdline3')!r} and token {serial.value('token3')!r}")
    text = serial.text
    hop1 = text[text.index("exec1-next"):text.index("stage-begin 2")]
    hop2 = text[text.index("exec2-next"):text.index("stage-begin 3")]
    if SETUP_CODE_LINE.search(hop1):
        serial.fail("the real-mode setup code ran on the 32-bit entry")
    if not SETUP_CODE_LINE.search(hop2):
        serial.fail(f"the real-mode setup code did not say {SETUP_CODE_SAYS!r} after kexec --real-mode")

"""The DTB the arm64 kexec_file loader builds (drivers/of/kexec.c), predicted from the boot DTB.

Expected sizes are worked out by hand from the flattened-tree format (a
property is a 12-byte header plus its value padded to 4; a new name adds
itself and a NUL to the strings block; a /memreserve/ entry is 16 bytes) and
the kernel's edits; the edited trees are read back with dtc.
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from pykexec.machine import Machine, Range
from pykexec.plan import plan
from pykexec.plan.arm64 import kexec_file_dtb

from ..machine.dtb import dtb, reg, u32
from .conftest import GiB, MiB, arm64, simple_machine

INITRD = (0x48000000, 0x2000)       # where QEMU put the boot initrd
KASLR = struct.pack(">Q", 0x1122334455667788)


def qemu_like(chosen_extra: dict | None = None, memreserve=()) -> bytes:
    """QEMU virt's /chosen after boot: bootargs, one-cell initrd-start/-end, a kaslr-seed
    (the rng-seed is NOP'd by the kernel: absent here)."""
    chosen = {"bootargs": b"console=ttyAMA0\0", "linux,initrd-start": u32(INITRD[0]),
              "linux,initrd-end": u32(INITRD[0] + INITRD[1]), "kaslr-seed": KASLR, **(chosen_extra or {})}
    return dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2)},
                "/memory@40000000": {"device_type": b"memory\0", "reg": reg([(0x40000000, GiB)])},
                "/chosen": chosen}, list(memreserve))


def packed(blob: bytes) -> int:
    """header + reservation block + structure + strings (what fdt_pack leaves)."""
    (_, _, off_struct, _, off_rsv, _, _, _, size_strings, size_struct) = struct.unpack_from(">10I", blob)
    return 40 + (off_struct - off_rsv) + size_struct + size_strings


def dts(blob: bytes, tmp_path) -> str:
    path = tmp_path / "t.dtb"
    path.write_bytes(blob)
    return subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(path)], check=True,
                          stdout=subprocess.PIPE, text=True).stdout


def arm_machine(**changes) -> Machine:
    return Machine(**{"arch": "arm64", "kernel_release": "7.2.13", "rng_ready": True, **changes})


def test_normal_load_dtb_size_and_content(tmp_path):
    boot = qemu_like()
    out = kexec_file_dtb(boot, machine=arm_machine(), cmdline="c=1", initrd=(0x50000000, 0x1234))
    # initrd-start/-end grow from one cell to u64 (+4 each); bootargs 16 -> 4 bytes (-12);
    # kaslr-seed deleted and set again (0); rng-seed new (12 + 128, name 9);
    # linux,booted-from-kexec new (12, name 24); the new initrd reserved (+16)
    assert len(out) == packed(boot) + 4 + 4 - 12 + 140 + 12 + 9 + 24 + 16
    text = dts(out, tmp_path)
    assert "/memreserve/\t0x0000000050000000 0x0000000000001234;" in text
    assert 'bootargs = "c=1";' in text and "linux,booted-from-kexec;" in text
    assert "linux,initrd-start = <0x00 0x50000000>;" in text and "linux,initrd-end = <0x00 0x50001234>;" in text
    assert "kaslr-seed = <0x00 0x00>;" in text and "rng-seed = <" + " ".join(["0x00"] * 32) + ">;" in text


def test_crash_load_dtb_without_initrd_and_rng(tmp_path):
    boot = qemu_like(memreserve=[INITRD])
    crash = (Range(0x60000000, 0x18000000), Range(0x41000000, 0x1000000))
    out = kexec_file_dtb(boot, machine=arm_machine(rng_ready=False), cmdline=None, initrd=None,
                         elfcorehdr=(0x77ff0000, 0x1000), usable=crash)
    # the boot initrd's reservation goes (-16), the elfcorehdr's comes (+16); initrd-start/-end
    # (12 + 4 each) and bootargs (12 + 16) and kaslr-seed (12 + 8) go; linux,elfcorehdr (12 + 16,
    # name 17), linux,usable-memory-range (12 + 32, name 26), linux,booted-from-kexec (12, name 24)
    assert len(out) == packed(boot) - 16 - 16 - 28 - 20 + 28 + 17 + 44 + 26 + 12 + 24
    text = dts(out, tmp_path)
    assert "/memreserve/\t0x0000000077ff0000 0x0000000000001000;" in text and "0x48000000" not in text
    assert "linux,elfcorehdr = <0x00 0x77ff0000 0x00 0x1000>;" in text
    assert ("linux,usable-memory-range = <0x00 0x60000000 0x00 0x18000000 0x00 0x41000000 0x00 0x1000000>;"
            in text)
    assert "bootargs" not in text and "seed" not in text and "initrd" not in text


def test_running_kernel_crash_properties_are_replaced():
    """A capture kernel's own DTB (it has linux,elfcorehdr and a usable range) loading a normal
    kernel: both go, and so does their string-less footprint in the structure block."""
    boot = qemu_like({"linux,elfcorehdr": reg([(0x77ff0000, 0x1000)]),
                      "linux,usable-memory-range": reg([(0x60000000, 0x18000000)])})
    base = qemu_like()
    m = arm_machine()
    a = kexec_file_dtb(boot, machine=m, cmdline="x", initrd=None)
    b = kexec_file_dtb(base, machine=m, cmdline="x", initrd=None)
    # the same tree but for two names left in the strings block (17 + 26 bytes)
    assert len(a) == len(b) + 17 + 26


def test_plan_sizes_the_dtb_segment_from_the_boot_dtb():
    boot = qemu_like()
    m = simple_machine(Range(0x40000000, GiB), arch="arm64", fdt=boot, rng_ready=True, fdt_size=1 << 20)
    p = plan(arm64(image_size=0x1000000), machine=m, initrd=bytes(0x1234), cmdline="c=1")
    kernel, initrd, dtb_seg = p.segments
    want = packed(boot) + 4 + 4 - 12 + 140 + 12 + 9 + 24 + 16
    assert (dtb_seg.bufsz, dtb_seg.memsz) == (want, 0x1000)
    assert dtb_seg.mem == 0x40000000 + GiB - 2 * MiB


def test_initrd_start_without_end_is_refused():
    boot = dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2)},
                "/chosen": {"linux,initrd-start": u32(0x48000000)}})
    with pytest.raises(Exception, match="initrd-end"):
        kexec_file_dtb(boot, machine=arm_machine(), cmdline="x", initrd=None)

"""Xen's EFI load types on real material: XenServer's Xen as built (its own purgatory) and
Debian's kernels planned for both variants.

Expected values are read from the files with struct and pyelftools, never through pykexec.
"""

from __future__ import annotations

import io
import struct

import pytest
from elftools.elf.elffile import ELFFile

from pykexec.formats.prepare import prepare
from pykexec.machine import Range
from pykexec.plan import plan
from pykexec.plan.xen import XENSERVER_PURGATORY_MEMSZ
from tests import material
from tests.unit.plan.conftest import simple_machine

pytestmark = pytest.mark.real

GiB, MiB = 1 << 30, 1 << 20
ELF64_REL = b"\x7fELF\x02\x01\x01"
SHF_ALLOC = 2


def purgatory_memsz(xen: bytes) -> int:
    """What XenServer's ``kimage_purgatory_alloc`` reserves for the ET_REL purgatory embedded in
    Xen (``kexec_purgatory``): its SHF_ALLOC sections laid out in order with their alignment, the
    NOBITS ones after the rest, rounded to whole pages as ``kimage_purgatory_move`` maps them."""
    found = []
    at = xen.find(ELF64_REL)
    while at >= 0:
        elf = ELFFile(io.BytesIO(xen[at:]))
        if elf["e_type"] == "ET_REL" and elf["e_machine"] == "EM_X86_64":
            found.append(elf)
        at = xen.find(ELF64_REL, at + 1)
    assert len(found) == 1, f"expected one embedded x86-64 relocatable ELF (the purgatory), found {len(found)}"
    bufsz = bss = 0
    bss_align = 1
    for sec in found[0].iter_sections():
        if not sec["sh_flags"] & SHF_ALLOC:
            continue
        align = max(1, sec["sh_addralign"])
        if sec["sh_type"] == "SHT_NOBITS":
            bss_align = max(bss_align, align)
            bss = -(-bss // align) * align + sec["sh_size"]
        else:
            bufsz = -(-bufsz // align) * align + sec["sh_size"]
    memsz = -(-bufsz // bss_align) * bss_align + bss
    return -(-memsz // 4096) * 4096


def test_the_planner_reserves_what_xenservers_purgatory_takes():
    xen = material.xenserver_xen().read_bytes()
    assert purgatory_memsz(xen) == XENSERVER_PURGATORY_MEMSZ


@pytest.mark.parametrize("target, crash", [("xen-efi", True), ("xen-efi", False), ("xen-efi-v2", True)])
def test_debian_kernels_plan_for_both_variants(bookworm_cloud, bookworm_signed, target, crash):
    machine = simple_machine(Range(MiB, 3 * GiB), hypervisor="xen", xen_crash_area=Range(GiB, 512 * MiB),
                             mem_total=3 * GiB, possible_cpus=1)
    for path in (bookworm_cloud, bookworm_signed):
        data = path.read_bytes()
        setup_sects, = struct.unpack_from("<B", data, 0x1F1)
        align, = struct.unpack_from("<I", data, 0x230)
        kern16 = ((setup_sects or 4) + 1) * 512
        p = plan(prepare(data), machine=machine, target=target, crash=crash, initrd=bytes(4 * MiB),
                 cmdline="console=ttyS0")
        kernel = p.segments[0]
        dest = kernel.mem + kernel.offset
        assert bytes(kernel.buffer) == data, path                   # the file, signature and all
        assert (dest + kern16) % align == 0 and p.entry == dest + kern16 + 0x200
        assert all(s.range in machine.xen_crash_area for s in p.segments if crash and not s.null)
        assert p.validate() == ()

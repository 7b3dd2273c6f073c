"""linux-user through the 32-bit boot protocol: what bzImage64_probe refuses and kexec-tools' bzImage loader takes.

Expected values come from boot.rst ("32-bit Boot Protocol", the field table) and
kexec-tools' kexec/arch/i386/kexec-bzImage.c: a kernel that is not relocatable
goes to 0x100000; a relocatable one lowest in [1 MiB, min(initrd_addr_max,
0x37ffffff)]; the initrd highest in [16 MiB, initrd_addr_max]; cmdline_size is
255 before 2.06 and initrd_addr_max 0x37ffffff before 2.03.
"""

from __future__ import annotations

import pytest

from pykexec.errors import PlacementError
from pykexec.machine import Range
from pykexec.plan import plan

from .conftest import GiB, MiB, debian61_bzimage, simple_machine

INITRD = bytes(5 * MiB)
# memtest86+ 6.10's x64 header (Debian's memtest86+x64.bin): 2.12, LOADED_HIGH, XLF_KERNEL_64 without
# XLF_CAN_BE_LOADED_ABOVE_4G, not relocatable, init_size 0x6acf8, cmdline_size 255.
MEMTEST = dict(version=0x20C, setup_sects=2, init_size=0x6ACF8, kernel_alignment=0x1000, relocatable_kernel=0,
               pref_address=0x100000, cmdline_size=255, xloadflags=0x9, loadflags=0x01, initrd_addr_max=0xFFFFFFFF)


@pytest.fixture
def m4g():
    return simple_machine(Range(0x1000, 0x9E000), Range(MiB, 4 * GiB - MiB), Range(4 * GiB, 4 * GiB))


def test_not_relocatable_kernel_at_1mib_spanning_init_size(m4g):
    p = plan(debian61_bzimage(**MEMTEST), machine=m4g, target="linux-user", cmdline="console=ttyS0")
    kernel = next(s for s in p.segments if s.role == "kernel")
    assert (kernel.mem, kernel.memsz) == (0x100000, 0x6B000)
    assert all(s.end <= 4 * GiB for s in p.segments)
    assert {s.role for s in p.segments} == {"kernel", "purgatory", "boot-params", "setup-data-rng"}
    assert any("32-bit boot protocol" in n for n in p.notes)
    assert p.validate() == ()


def test_relocatable_without_above_4g_stays_low(m4g):
    bz = debian61_bzimage(xloadflags=0x1, initrd_addr_max=0x37FFFFFF)
    p = plan(bz, machine=m4g, target="linux-user", initrd=INITRD)
    kernel = next(s for s in p.segments if s.role == "kernel")
    initrd = next(s for s in p.segments if s.role == "initrd")
    assert kernel.mem == 0x200000                    # lowest >= 1 MiB at kernel_alignment 2 MiB
    assert initrd.end == 0x38000000                  # highest under initrd_addr_max 0x37ffffff
    assert all(s.end <= 4 * GiB for s in p.segments)


def test_old_protocol_limits(m4g):
    bz = debian61_bzimage(version=0x203, relocatable_kernel=0, initrd_addr_max=0x0FFFFFFF)
    with pytest.raises(PlacementError, match=r"256 bytes with its NUL.*at most 255 \(cmdline_size, 255 before 2.06\)"):
        plan(bz, machine=m4g, target="linux-user", cmdline="x" * 255)
    p = plan(bz, machine=m4g, target="linux-user", cmdline="x" * 254, initrd=INITRD)
    assert next(s for s in p.segments if s.role == "initrd").end == 0x10000000
    assert "setup-data-rng" not in {s.role for s in p.segments}     # setup_data is 2.09+
    old = debian61_bzimage(version=0x202, relocatable_kernel=0)
    initrd = next(s for s in plan(old, machine=m4g, target="linux-user", initrd=INITRD).segments
                  if s.role == "initrd")
    assert initrd.end == 0x38000000                  # 0x37ffffff before 2.03


def test_refusals(m4g):
    with pytest.raises(PlacementError, match="zImage.*LOADED_HIGH clear"):
        plan(debian61_bzimage(version=0x207, loadflags=0), machine=m4g, target="linux-user")
    with pytest.raises(PlacementError, match="kdump.*32-bit entry"):
        plan(debian61_bzimage(**MEMTEST), machine=m4g.with_changes(crashk_res=Range(GiB, 256 * MiB)),
             target="linux-user", crash=True)
    high = simple_machine(Range(0x1000, 0x9E000), Range(16 * MiB, GiB))
    with pytest.raises(PlacementError, match=r"kernel must go to \[0x100000, 0x16b000\).*not inside System RAM"):
        plan(debian61_bzimage(**MEMTEST), machine=high, target="linux-user")


def test_file_mode_still_refuses_with_the_kernels_reason(m4g):
    with pytest.raises(PlacementError, match=r"XLF_CAN_BE_LOADED_ABOVE_4G clear"):
        plan(debian61_bzimage(**MEMTEST), machine=m4g, target="linux-file")

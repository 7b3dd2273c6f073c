"""Asking for a bzImage's entry (``--entry``; kexec-tools' ``--entry-32bit`` and ``--real-mode``).

Expected values come from kexec-tools' kexec/arch/x86_64/kexec-bzImage64.c
(``bzImage64_load``: either flag sends a kexec_load to the bzImage loader,
``--real-mode`` winning; ``bzImage64_load_file``: "Kexec2 syscall does not
support 16bit or 32bit entry"), from its kexec-bzImage.c (the kernel lowest in
[1 MiB, ...] at kernel_alignment; the real-mode code, its heap and the
purgatory below 640 KiB) and from boot.rst (code32_start).
"""

from __future__ import annotations

import pytest

from pykexec.errors import PlacementError, UsageError
from pykexec.machine import Range
from pykexec.plan import plan
from pykexec.receivers import TABLE

from .conftest import GiB, MiB, debian61_bzimage, simple_machine
from .test_user32 import MEMTEST

LOW_MEMORY = 0xA0000


@pytest.fixture
def m4g():
    return simple_machine(Range(0x1000, 0x9E000), Range(MiB, 4 * GiB - MiB), Range(4 * GiB, 4 * GiB))


def _segment(p, role):
    return next(s for s in p.segments if s.role == role)


def test_a_bzimage64_enters_at_64_bits_unless_asked(m4g):
    bz = debian61_bzimage()
    default = plan(bz, machine=m4g, target="linux-user")
    assert not any("32-bit" in n or "real-mode" in n for n in default.notes)
    asked = plan(bz, machine=m4g, target="linux-user", entry=64)
    assert asked.segments == default.segments


def test_entry_32_takes_the_32_bit_boot_protocol(m4g):
    p = plan(debian61_bzimage(), machine=m4g, target="linux-user", entry=32, cmdline="console=ttyS0")
    assert any("32-bit boot protocol" in n for n in p.notes)
    assert _segment(p, "kernel").mem == 0x200000              # lowest >= 1 MiB at kernel_alignment 2 MiB
    assert all(s.end <= 4 * GiB for s in p.segments)
    assert p.validate() == ()


def test_entry_16_takes_the_real_mode_entry_below_640k(m4g):
    p = plan(debian61_bzimage(), machine=m4g, target="linux-user", entry=16, cmdline="console=ttyS0")
    assert any("real-mode entry" in n and "asked for" in n for n in p.notes), p.notes
    assert _segment(p, "purgatory").end <= LOW_MEMORY and _segment(p, "boot-params").end <= LOW_MEMORY
    assert _segment(p, "kernel").mem == 0x200000
    assert p.entry == _segment(p, "purgatory").mem


def test_without_a_target_the_entry_chooses_kexec_load(m4g):
    assert plan(debian61_bzimage(), machine=m4g).target == "linux-file"
    assert plan(debian61_bzimage(), machine=m4g, entry=32).target == "linux-user"


def test_what_the_image_does_not_have_is_refused(m4g):
    with pytest.raises(PlacementError, match=r"not a relocatable bzImage64.*XLF_KERNEL_64\|XLF_CAN_BE_LOADED_ABOVE_4G"):
        plan(debian61_bzimage(**MEMTEST), machine=m4g, target="linux-user", entry=64)
    with pytest.raises(PlacementError, match=r"no 32-bit entry: code32_start \(0x214\) is 0"):
        plan(debian61_bzimage(version=0x207, code32_start=0), machine=m4g, target="linux-user", entry=32)
    with pytest.raises(PlacementError, match="zImage.*LOADED_HIGH clear"):
        plan(debian61_bzimage(version=0x207, loadflags=0), machine=m4g, target="linux-user", entry=16)


def test_real_mode_needs_a_bios(m4g):
    with pytest.raises(PlacementError, match=r"real-mode entry was asked for.*calls the BIOS.*UEFI"):
        plan(debian61_bzimage(), machine=m4g.with_changes(efi=True), target="linux-user", entry=16)


def test_kdump_only_at_64_bits(m4g):
    crash = m4g.with_changes(crashk_res=Range(GiB, 256 * MiB))
    assert plan(debian61_bzimage(), machine=crash, target="linux-user", crash=True, entry=64).crash
    for bits, name in ((32, "32-bit"), (16, "real-mode")):
        with pytest.raises(PlacementError, match=f"kdump \\(--crash\\) through the {name} entry is not supported"):
            plan(debian61_bzimage(), machine=crash, target="linux-user", crash=True, entry=bits)


def test_receivers_without_a_choice_say_who_has_one(m4g):
    with pytest.raises(UsageError, match=r"--entry 32: linux-file on x86_64 chooses the entry itself.*"
                                         r"linux-user with an x86_64 bzimage \(16, 32, 64\)"):
        plan(debian61_bzimage(), machine=m4g, target="linux-file", entry=32)
    with pytest.raises(UsageError, match=r"--entry 8: linux-user on x86_64 offers 16, 32, 64"):
        plan(debian61_bzimage(), machine=m4g, target="linux-user", entry=8)


def test_the_table_offers_the_entries_the_planner_knows():
    from pykexec.plan.x86 import ENTRIES
    offered = [e for e in TABLE if e.entries]
    assert [(e.arch, e.target, e.layers) for e in offered] == [("x86_64", "linux-user", frozenset({"bzimage"}))]
    assert offered[0].entries == set(ENTRIES)

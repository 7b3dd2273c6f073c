"""The memory map pykexec hands on: from the machine model, for a capture kernel, as memmap=."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pykexec.boot import e820
from pykexec.boot.e820 import E820_ACPI, E820_NVS, E820_RAM, E820_RESERVED, E820Entry
from pykexec.machine import Range, TypedRange
from pykexec.machine.model import Machine

from .conftest import KiB, MiB, qemu_crash, qemu_pc


def test_from_qemu_iomem_keeps_top_level_firmware_entries():
    entries = e820.from_machine(qemu_pc())
    assert entries[:3] == (E820Entry(0, 0x1000, E820_RESERVED), E820Entry(0x1000, 0x9EC00, E820_RAM),
                           E820Entry(0x9FC00, 0x400, E820_RESERVED))
    assert E820Entry(0x100000, 0x3FEE0000, E820_RAM) in entries
    assert all(e.type != E820_RAM or e.addr < 1 << 32 for e in entries)
    # PCI windows, ROMs, APICs are resources, not firmware map entries
    assert not any(e.addr == 0xFEC00000 for e in entries)


def test_driver_managed_ram_is_left_to_its_driver():
    m = Machine(memory=(TypedRange(MiB, 64 * MiB, "System RAM", 0),
                        TypedRange(1 << 32, 1 << 30, "Soft Reserved", 0),
                        TypedRange(1 << 33, 1 << 30, "System RAM (kmem)", 0)))
    kinds = [(x.addr, x.type) for x in e820.from_machine(m)]
    assert kinds == [(MiB, E820_RAM), (1 << 32, e820.E820_SOFT_RESERVED)]


def test_adjacent_entries_of_one_type_merge():
    assert e820.normalise([E820Entry(0x2000, 0x1000, 1), E820Entry(0x1000, 0x1000, 1),
                           E820Entry(0x3000, 0x1000, 2), E820Entry(0x4000, 0, 1)]) == (
        E820Entry(0x1000, 0x2000, 1), E820Entry(0x3000, 0x1000, 2))


def test_backup_source_is_the_ram_below_640k():
    assert e820.backup_source(qemu_pc()) == Range(0x1000, 0x9EC00)


def test_crash_map_gives_the_capture_kernel_only_its_own_memory():
    m = qemu_crash()
    crash = m.crashk_res
    backup, elf = Range(crash.start, 0xA0000), Range(crash.start + 0xA0000, 0x4000)
    entries = e820.crash_map(m, keep_out=[backup, elf], backup=e820.backup_source(m))
    ram = [x.range for x in entries if x.type == E820_RAM]
    assert ram[0] == e820.backup_source(m)
    assert ram[1] == Range.span(elf.end, crash.end)
    assert sum(r.size for r in ram[1:]) == crash.size - backup.size - elf.size
    assert any(x.type == E820_RESERVED for x in entries)
    assert not any(x.type == E820_RAM and x.range.overlaps(Range(2 * MiB, 64 * MiB)) for x in entries)


def test_memmap_cmdline_as_kexec_tools_writes_it():
    entries = (E820Entry(0x1000, 0x9F000, E820_RAM), E820Entry(0x2F000000, 0x10000000, E820_RAM),
               E820Entry(0x7FFE0000, 0x20000, E820_ACPI), E820Entry(0x7FFC0000, 0x20000, E820_NVS),
               E820Entry(0x200000, 0x10000, E820_RAM), E820Entry(0xFEC00000, 0x1000, E820_RESERVED))
    assert e820.memmap_cmdline(entries) == (
        "memmap=exactmap memmap=636K@4K memmap=262144K@770048K memmap=128K#2097024K "
        "memmap=128K#2096896K memmap=4K$4173824K")


def test_multiboot_lower_and_upper_memory():
    entries = e820.from_machine(qemu_pc())
    assert e820.lower_upper_kib(entries) == (0x9FC00 // KiB, (0x3FFE0000 - MiB) // KiB)
    assert e820.lower_upper_kib([E820Entry(0x20000, 0x1000, E820_RAM)]) == (0, 0)


@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 1 << 16), st.sampled_from([1, 2, 3, 4])),
                max_size=60))
def test_normalise_is_sorted_disjoint_within_a_type(raw):
    out = e820.normalise(E820Entry(a * 0x1000, s * 0x1000, t) for a, s, t in raw)
    assert list(out) == sorted(out)
    for a, b in zip(out, out[1:]):
        assert not (a.type == b.type and a.end >= b.addr)
    assert all(x.size > 0 for x in out)

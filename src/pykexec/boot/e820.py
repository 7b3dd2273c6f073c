"""The memory map handed to the next kernel: e820 entries, from the machine model.

Types are those of arch/x86/include/asm/e820/types.h (``E820_TYPE_*``), which
Multiboot 1 and 2 share for 1-5 (Multiboot2 spec 3.6.8: 1 available, 3 ACPI
reclaimable, 4 NVS, 5 defective RAM, anything else reserved).  The machine's
ranges carry the names /proc/iomem and /sys/firmware/memmap print
(arch/x86/kernel/e820.c ``e820_type_to_string``); only top-level entries are
firmware map entries, the nested ones are the kernel's own resources.

Driver-managed RAM ("System RAM (kmem)", "System RAM (virtio_mem)") is left
out: the next kernel's driver adds it again, and the firmware's view of it is
the "Soft Reserved" parent, which is kept.

For a crash (capture) kernel the map is what kexec-tools' crashdump-x86.c
``load_crashdump_segments`` hands over: the backup source (the first RAM below
640 KiB) and the crash regions as RAM, minus the backup and elfcorehdr
segments (the capture kernel must not overwrite them), plus the ACPI and
reserved ranges of the running system.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..machine.model import Machine
from ..machine.ranges import KiB, MiB, Range, subtract

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5
E820_PMEM = 7
E820_PRAM = 12
E820_SOFT_RESERVED = 0xEFFFFFFF

TYPES = {
    "System RAM": E820_RAM,
    "Reserved": E820_RESERVED,
    "reserved": E820_RESERVED,
    "ACPI Tables": E820_ACPI,
    "ACPI Non-volatile Storage": E820_NVS,
    "Unusable memory": E820_UNUSABLE,
    "Persistent Memory": E820_PMEM,
    "Persistent Memory (legacy)": E820_PRAM,
    "Soft Reserved": E820_SOFT_RESERVED,
}
NAMES = {E820_RAM: "usable", E820_RESERVED: "reserved", E820_ACPI: "ACPI data", E820_NVS: "ACPI NVS",
         E820_UNUSABLE: "unusable", E820_PMEM: "persistent (type 7)", E820_PRAM: "persistent (type 12)",
         E820_SOFT_RESERVED: "soft reserved"}
ENTRY = struct.Struct("<QQI")  # struct boot_e820_entry { u64 addr; u64 size; u32 type; } __packed
BACKUP_SRC_END = 640 * KiB


@dataclass(frozen=True, order=True)
class E820Entry:
    addr: int
    size: int
    type: int

    @property
    def range(self) -> Range:
        return Range(self.addr, self.size)

    @property
    def end(self) -> int:
        return self.addr + self.size

    def pack(self) -> bytes:
        return ENTRY.pack(self.addr, self.size, self.type)

    def __str__(self) -> str:
        return f"[{self.addr:#018x}-{self.end - 1:#018x}] {NAMES.get(self.type, hex(self.type))}"


def normalise(entries: Iterable[E820Entry]) -> tuple[E820Entry, ...]:
    """Sorted, empty entries dropped, touching entries of one type merged."""
    out: list[E820Entry] = []
    for e in sorted(x for x in entries if x.size > 0):
        if out and out[-1].type == e.type and out[-1].end >= e.addr:
            last = out[-1]
            out[-1] = E820Entry(last.addr, max(last.end, e.end) - last.addr, last.type)
        else:
            out.append(e)
    return tuple(out)


def from_machine(machine: Machine) -> tuple[E820Entry, ...]:
    """The running system's firmware map: the top-level ranges with an e820 type."""
    out = []
    for r in machine.memory:
        if r.depth != 0 or r.driver_managed:
            continue
        kind = TYPES.get(r.type)
        if kind is not None:
            out.append(E820Entry(r.start, r.size, kind))
    return normalise(out)


def backup_source(machine: Machine) -> Range | None:
    """The RAM below 640 KiB that a crash load backs up (kexec-tools ``get_backup_area``:
    the first "System RAM" ending at or below 0xa0000)."""
    for r in machine.system_ram():
        if r.start < BACKUP_SRC_END:
            end = min(r.end, BACKUP_SRC_END)
            return Range.span(r.start, end) if end > r.start else None
    return None


def crash_map(machine: Machine, *, keep_out: Sequence[Range] = (),
              backup: Range | None = None) -> tuple[E820Entry, ...]:
    """The capture kernel's map: backup source and crash regions as RAM, minus ``keep_out``
    (the backup copy and the elfcorehdr), plus the ACPI, NVS and reserved ranges."""
    ram = [r for r in machine.crash_regions()]
    if backup is not None:
        ram.append(backup)
    usable = subtract(ram, keep_out)
    out = [E820Entry(r.start, r.size, E820_RAM) for r in usable]
    for e in from_machine(machine):
        if e.type != E820_RAM:
            out.append(e)
    return normalise(out)


def memmap_cmdline(entries: Sequence[E820Entry], *, min_size: int = 100 * KiB) -> str:
    """``memmap=exactmap memmap=nK@sK ...`` (kexec-tools ``cmdline_add_memmap``, used with
    --pass-memmap-cmdline): RAM as ``@``, ACPI data and NVS as ``#``, reserved as ``$``;
    RAM pieces under ``min_size`` are left out, as kexec-tools does, to save room."""
    words = ["memmap=exactmap"]
    for e in entries:
        start_k, end_k = e.addr // KiB, -(-e.end // KiB)
        if e.type == E820_RAM:
            start_k, end_k = -(-e.addr // KiB), e.end // KiB
            if (end_k - start_k) * KiB < min_size:
                continue
            words.append(f"memmap={end_k - start_k}K@{start_k}K")
        elif e.type in (E820_ACPI, E820_NVS):
            words.append(f"memmap={end_k - start_k}K#{start_k}K")
        elif e.type == E820_RESERVED:
            words.append(f"memmap={end_k - start_k}K${start_k}K")
    return " ".join(words)


def lower_upper_kib(entries: Sequence[E820Entry]) -> tuple[int, int]:
    """(mem_lower, mem_upper) in KiB, as Multiboot defines them: RAM from 0 (below 640 KiB),
    and RAM from 1 MiB up to the first hole.  Linux hides the first page of RAM from
    /proc/iomem, so RAM starting within the first 64 KiB counts as starting at 0 (as
    kexec-tools' ``multiboot_construct_memory_map`` does)."""
    lower = upper = 0
    for e in entries:
        if e.type != E820_RAM:
            continue
        if e.addr <= 64 * KiB:
            lower = max(lower, min(e.end, BACKUP_SRC_END) // KiB)
        if e.addr <= MiB < e.end:
            upper = max(upper, (e.end - MiB) // KiB)
    return lower, min(upper, 0xFFFFFFFF)

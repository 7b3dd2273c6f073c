"""What the running Linux kernel does, by version and config, where it changes placement.

The planner predicts the *running* kernel's choices (it executes
``kexec_file_load``), so the behaviour is keyed on the machine's
``kernel_release`` and kernel config, with the newest behaviour when unknown.

| change | since | source |
|---|---|---|
| top-down walks visit System RAM highest first (``walk_system_ram_res_rev``) | 6.8 | kernel/kexec_file.c ``kexec_walk_resources``, "kexec_file: load kernel at top of system RAM if required" |
| top-down first candidate is ``end - memsz + 1`` (was ``end - memsz``) | 6.8 | "kexec_file: fix incorrect temp_start value in locate_mem_hole_top_down()" |
| x86 kernel ``buf_min = max(MIN_KERNEL_LOAD_ADDR, pref_address)`` | 6.8 | arch/x86/kernel/kexec-bzimage64.c, "kexec: Allocate kernel above bzImage's pref_address" |
| x86 crash backup region of the first 640 KiB gone; low 1 MiB excluded from elfcorehdr | 5.5 | arch/x86/kernel/crash.c, "x86/kdump: clean up all the code related to the backup region" |
| elfcorehdr sized for hotplug (CONFIG_CRASH_HOTPLUG) | 6.6 | arch/x86/kernel/crash.c ``crash_load_segments`` |
| KHO scratch-only placement, SETUP_KEXEC_KHO | 6.16 | kernel/kexec_handover.c (seed 002) |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..machine.model import Machine
from ..machine.ranges import PAGE_SIZE, Range, align_up, subtract, MiB

NEWEST = (99, 0)
ELF_CORE_HEADER_ALIGN = 4096  # include/linux/kexec.h


def parse_release(release: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class KernelBehaviour:
    """The version- and config-dependent choices of the running kernel's kexec_file loader."""

    version: tuple[int, int]
    known: bool
    rev_walk: bool
    exact_top_down: bool
    pref_address_min: bool
    crash_backup_region: bool
    crash_hotplug: bool
    ima_kexec: bool
    kho_setup_data: bool
    nr_cpus_default: int
    crash_max_memory_ranges: int
    memory_hotplug: bool

    @classmethod
    def of(cls, machine: Machine) -> "KernelBehaviour":
        parsed = parse_release(machine.kernel_release)
        version = parsed or NEWEST
        cfg = machine.config_enabled
        return cls(
            version=version, known=parsed is not None,
            rev_walk=version >= (6, 8), exact_top_down=version >= (6, 8),
            pref_address_min=version >= (6, 8), crash_backup_region=version < (5, 5),
            crash_hotplug=version >= (6, 6) and bool(cfg("CONFIG_CRASH_HOTPLUG")),
            ima_kexec=bool(cfg("CONFIG_IMA_KEXEC")),
            kho_setup_data=version >= (6, 16) and cfg("CONFIG_KEXEC_HANDOVER") is not False,
            nr_cpus_default=int(machine.config("CONFIG_NR_CPUS_DEFAULT") or 64),
            crash_max_memory_ranges=int(machine.config("CONFIG_CRASH_MAX_MEMORY_RANGES") or 8192),
            memory_hotplug=bool(cfg("CONFIG_MEMORY_HOTPLUG")),
        )

    def note(self, arch: str = "x86_64") -> str | None:
        """What an unknown kernel version means for the plan, in ``arch``'s terms."""
        if self.known:
            return None
        rule = ", kernel above pref_address" if arch == "x86_64" else ""
        return ("the running kernel's version is unknown; placement follows the newest kernel "
                f"(top-down walks from the highest RAM{rule})")


def elfcorehdr_ranges(machine: Machine, *, exclude_low_1m: bool) -> int:
    """How many PT_LOAD ranges the elfcorehdr describes: System RAM minus the crash regions.

    x86 ``prepare_elf_headers`` walks every SYSTEM_RAM|BUSY resource
    (driver-managed included), then ``elf_header_exclude_ranges`` removes the
    low 1 MiB (since 5.5), crashk_res and crashk_low_res.
    """
    ram = machine.system_ram()
    holes = list(machine.crash_regions())
    if exclude_low_1m:
        holes.append(Range(0, MiB))
    # Only the few ranges a hole touches can split or vanish; count the rest as they are.
    touched = [r for r in ram if any(r.start < h.end and h.start < r.end for h in holes)] if len(ram) < 64 \
        else _touching(ram, holes)
    return len(ram) - len(touched) + len(subtract([Range(r.start, r.size) for r in touched], holes))


def _touching(ram, holes) -> list:
    import bisect

    starts = [r.start for r in ram]
    out = {}
    for h in holes:
        i = max(bisect.bisect_right(starts, h.start) - 1, 0)
        while i < len(ram) and ram[i].start < h.end:
            if ram[i].end > h.start:
                out[i] = ram[i]
            i += 1
    return list(out.values())


def elfcorehdr_size(machine: Machine, nr_ranges: int, behaviour: KernelBehaviour) -> tuple[int, int]:
    """(bufsz, memsz) of the elfcorehdr segment, after kernel/crash_core.c ``crash_prepare_elf64_headers``.

    nr_phdr = possible CPUs (one PT_NOTE each) + 1 (vmcoreinfo) + nr_ranges + 1
    (kernel text); size = ALIGN(sizeof(Elf64_Ehdr) + nr_phdr * sizeof(Elf64_Phdr),
    ELF_CORE_HEADER_ALIGN).  With CONFIG_CRASH_HOTPLUG the segment's memsz is
    sized for 2 + CONFIG_NR_CPUS_DEFAULT + (CONFIG_CRASH_MAX_MEMORY_RANGES with
    memory hotplug, else nr_ranges) headers.
    """
    from ..boot import elfcore  # crash loads only
    nr_phdr = elfcore.phnum(machine.possible_cpus or 1, nr_ranges)
    bufsz = align_up(elfcore.EHDR.size + nr_phdr * elfcore.PHDR.size, ELF_CORE_HEADER_ALIGN)
    memsz = bufsz
    if behaviour.crash_hotplug:
        pnum = 2 + behaviour.nr_cpus_default + (behaviour.crash_max_memory_ranges
                                                if behaviour.memory_hotplug else nr_ranges)
        memsz = elfcore.EHDR.size + pnum * elfcore.PHDR.size
    return bufsz, max(memsz, bufsz)


def user_elfcorehdr_size(machine: Machine) -> tuple[int, int]:
    """(bufsz, memsz) of the elfcorehdr a kexec_load loader writes: the header
    :func:`pykexec.boot.elfcore.build` makes for the machine's CPUs and RAM ranges (the
    low 1 MiB included: user mode backs it up instead), in a segment of
    :func:`pykexec.boot.elfcore.user_memsz`."""
    from ..boot import elfcore  # crash loads only
    nr = elfcorehdr_ranges(machine, exclude_low_1m=False)
    bufsz = elfcore.header_size(elfcore.phnum(machine.possible_cpus or 1, nr))
    return bufsz, elfcore.user_memsz(bufsz, machine.page_size)


def destination_limit(arch: str, machine: Machine) -> int:
    """KEXEC_DESTINATION_MEMORY_LIMIT: segments must end below it (sanity_check_segment_list).

    x86_64: MAXMEM - 1 = 2^MAX_PHYSMEM_BITS - 1, 46 bits with 4-level paging,
    52 with 5-level (arch/x86/include/asm/kexec.h, sparsemem.h).  32-bit x86,
    arm64 and the rest: -1UL.
    """
    if arch == "x86_64":
        return (1 << (52 if machine.x86_5level else 46)) - 1
    if arch in ("x86", "arm"):
        return (1 << 32) - 1
    return (1 << 64) - 1


__all__ = ["KernelBehaviour", "elfcorehdr_ranges", "elfcorehdr_size", "user_elfcorehdr_size", "destination_limit",
           "PAGE_SIZE"]

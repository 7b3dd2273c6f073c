"""Pieces every planner shares: purgatory sizes, which memory a load walks, placing with reasons."""

from __future__ import annotations

from dataclasses import dataclass

from ..boot.e820 import backup_source
from ..errors import PlacementError
from ..machine.model import ARCH_KEEP_MEMBLOCK, Machine
from ..machine.ranges import KiB, Range, align_up, human_size, subtract
from .kexec_buf import KexecBuf, Placer, Segment, SegmentLimit, Walk


@dataclass(frozen=True)
class PurgatorySize:
    """What ``kexec_load_purgatory`` allocates for a purgatory ELF (kernel/kexec_file.c).

    ``kexec_purgatory_setup_kbuf`` sums the SHF_ALLOC sections: non-NOBITS ones
    each ALIGNed to their sh_addralign into ``bufsz`` (then ALIGNed to the bss
    alignment), NOBITS ones into the bss; ``memsz = bufsz + bss``; ``buf_align``
    is the largest section alignment.  ``entry_offset`` is ``e_entry`` relative
    to the start of the first executable section (image->start).
    """

    bufsz: int
    memsz: int
    align: int
    entry_offset: int
    measured_from: str


# Measured from the purgatory.ro embedded (as kexec_purgatory) in Debian's
# linux-image-6.1.0-56-cloud-amd64 and -amd64 6.1.192-2: .text 0x119f/16,
# .rodata 0x220/32, .modinfo 0x39/1, .rodata.str1.8 0x32/8, .data 0x1000/4096,
# .kexec-purgatory 0x120/32, .bss 0x1000/4096; e_entry (purgatory_start) 0x120.
# The same kernel under QEMU logged "Loaded purgatory at 0x9a000" and
# "Loading segment 0: ... bufsz=0x4000 mem=0x9a000 memsz=0x5000"
# (tests/data/machines/qemu-pc-1g-debian6.1.kexec-file.log).
LINUX_X86_64_PURGATORY = PurgatorySize(bufsz=0x4000, memsz=0x5000, align=0x1000, entry_offset=0x120,
                                       measured_from="Debian 6.1.0-56 (6.1.192-2) kexec_purgatory")

KEXEC_TOOLS_BACKUP_ALIGN = KiB   # crashdump-x86.c load_crashdump_segments: "align = 1024"


def crash_backup(machine: Machine) -> tuple[Range, KexecBuf] | None:
    """The x86 kexec_load crash backup: the RAM below 640 KiB it copies, and the segment it copies into.

    kexec-tools kexec/arch/i386/crashdump-x86.c ``load_crashdump_segments``
    adds a zeroed buffer of ``_ALIGN(backup_src_size, 1024)`` bytes as both
    bufsz and memsz, and ``add_buffer`` rounds memsz up to a page; it goes
    lowest in the crash region, before the elfcorehdr.  The purgatory copies
    the source there before the capture kernel runs.  None when no RAM lies
    below 640 KiB.
    """
    source = backup_source(machine)
    if source is None:
        return None
    size = align_up(source.size, KEXEC_TOOLS_BACKUP_ALIGN)
    return source, KexecBuf("backup", size, align_up(size, machine.page_size), top_down=False, buffer=bytes(size))


def require_memory(machine: Machine) -> None:
    if not machine.memory and machine.memblock_free is None:
        raise PlacementError("the machine description has no memory ranges; nothing can be placed",
                             errno="EADDRNOTAVAIL")


def crash_walk(machine: Machine, *, xen: bool = False) -> Walk:
    """Crash images walk only the crash region (``walk_iomem_res_desc(crashk_res.desc, ...)``;
    Xen: ``kexec_crash_area``)."""
    region = machine.xen_crash_area if xen else machine.crashk_res
    if region is not None:
        return Walk("the Xen crash area" if xen else "the crash region", (region,), "given")
    if not xen and machine.kexec_crash_size:
        raise PlacementError(f"a {human_size(machine.kexec_crash_size)} crash region is reserved but its "
                             "address is unknown: /proc/iomem shows it only to root (or pass --machine)",
                             errno="EADDRNOTAVAIL")
    what = ("the Xen crash area is unknown (describe xen.crash_area with --machine)" if xen
            else "no crash region is reserved (boot the running kernel with crashkernel=SIZE)")
    raise PlacementError(f"a crash load needs a crash region, but {what}", errno="EADDRNOTAVAIL")


def normal_walks(machine: Machine, *, file_mode: bool, rev_walk: bool) -> list[Walk]:
    """The memory a non-crash load may use, in the kernel's order (see kexec_locate_mem_hole)."""
    require_memory(machine)
    if file_mode and machine.kho_active:
        if not machine.kho_scratch:
            raise PlacementError("KHO is active, so kexec_file_load places every segment in KHO scratch "
                                 "memory, but the scratch areas are unknown (root can read "
                                 "/sys/kernel/debug/kho/out/scratch_phys; or pass --machine)",
                                 errno="EADDRNOTAVAIL")
        return [Walk("KHO scratch", machine.kho_scratch, "given")]
    if file_mode and machine.arch in ARCH_KEEP_MEMBLOCK:
        return [Walk("memblock free", machine.memblock_free_ranges(), "rev-if-top-down")]
    return [Walk("System RAM", machine.walkable_ram(), "rev-if-top-down" if rev_walk else "ascending")]


def add_fixed(placer: Placer, seg: Segment, machine: Machine, *, crash: bool) -> Segment:
    """A segment at an address the image dictates: it must be free RAM (or in the crash region)."""
    clash = placer.clash(seg.mem, seg.end)
    if clash is not None:
        raise PlacementError(f"{seg.role} [{seg.mem:#x}, {seg.end:#x}) overlaps {clash.role}", role=seg.role,
                             errno="EINVAL")
    allowed = [machine.crashk_res] if crash else list(machine.walkable_ram())
    if not any(r is not None and seg.range in r for r in allowed):
        where = "the crash region" if crash else "System RAM"
        raise PlacementError(f"{seg.role} must go to [{seg.mem:#x}, {seg.end:#x}), which is not inside "
                             f"{where}", role=seg.role, errno="EADDRNOTAVAIL")
    return placer.add_fixed(seg)


def place(placer: Placer, kbuf: KexecBuf, walks: list[Walk]) -> Segment:
    """``kexec_add_buffer`` or a PlacementError saying what did not fit and how much room there was."""
    try:
        seg = placer.add(kbuf, walks)
    except SegmentLimit as e:
        raise PlacementError(f"{kbuf.role} would be segment {e.count + 1}, but at most {e.limit} segments "
                             "are allowed (KEXEC_SEGMENT_MAX)", role=kbuf.role, errno="EINVAL") from e
    if seg is None:
        raise PlacementError(_no_room(placer, kbuf, walks), role=kbuf.role, errno="EADDRNOTAVAIL")
    return seg


def _no_room(placer: Placer, kbuf: KexecBuf, walks: list[Walk]) -> str:
    """One sentence: what needed how much, and the largest free piece where it could go."""
    window = Range.span(kbuf.buf_min, min(kbuf.buf_max, (1 << 64) - 1) + 1)
    where = " and ".join(w.name for w in walks) or "memory"
    free = []
    for w in walks:
        for r in w.ranges:
            part = r.intersect(window)
            if part:
                free.append(part)
    free = subtract(free, [s.range for s in placer.segments])
    largest = max((r.size for r in free), default=0)
    total = sum(r.size for r in free)
    need = human_size(max(kbuf.memsz, 1))
    limits = []
    if kbuf.buf_min:
        limits.append(f"at or above {kbuf.buf_min:#x}")
    if kbuf.buf_max < (1 << 64) - 1:
        limits.append(f"at or below {kbuf.buf_max:#x}")
    if kbuf.buf_align > 4096:
        limits.append(f"aligned to {human_size(kbuf.buf_align)}")
    constraint = f" ({', '.join(limits)})" if limits else ""
    after = f" after the {', '.join(s.role for s in placer.segments)}" if placer.segments else ""
    return (f"{kbuf.role} needs {need}{constraint} but {where} has {human_size(total)} free{after}, "
            f"the largest piece {human_size(largest)}")

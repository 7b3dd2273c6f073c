"""The receivers' own checks, each independent and runnable on any plan.

Linux (kernel/kexec_core.c ``sanity_check_segment_list``, run for both
syscalls, and kernel/kexec.c ``kexec_load_check`` for ``kexec_load``), in the
kernel's order, so the first violation is the errno the syscall returns:

1. ``mstart > mend`` (the end wraps) -> EADDRNOTAVAIL
2. start or end not page-aligned -> EADDRNOTAVAIL
3. ``mend >= KEXEC_DESTINATION_MEMORY_LIMIT`` -> EADDRNOTAVAIL
4. two segments overlap -> EINVAL
5. ``bufsz > memsz`` -> EINVAL
6. a segment, or all together, over half of ``totalram_pages()`` -> EINVAL
7. crash images: a segment outside ``crashk_res`` -> EADDRNOTAVAIL
8. ``kexec_load_check``: lockdown (LOCKDOWN_KEXEC; any mode) -> EPERM, and
   ``nr_segments > KEXEC_SEGMENT_MAX`` -> EINVAL.  kexec_file_load refuses a
   17th segment in ``kexec_add_buffer`` (-EINVAL) instead.

Xen (xen/common/kexec.c ``kexec_load``, xen/common/kimage.c):

1. ``nr_segments >= KEXEC_SEGMENT_MAX`` -> EINVAL (note: >=, so 16 is refused)
2. CRASH: entry outside ``kexec_crash_area`` -> EADDRNOTAVAIL
   (``kimage_crash_alloc``); CRASH and CRASH_EFI: a non-null segment outside
   it -> EADDRNOTAVAIL
3. ``do_kimage_alloc``: dest_maddr or dest_maddr + dest_size not page-aligned
   -> EADDRNOTAVAIL; overlap -> EINVAL; ``buf_size > dest_size`` -> EINVAL
4. CRASH_EFI ``kimage_find_kernel_entry_maddr`` (seed 000): "HdrS" magic and
   version >= 2.02, kernel_alignment a multiple of 2 MiB in [2 MiB, 16 MiB],
   ``dest + (setup_sects + 1) * 512`` aligned to it -> EINVAL
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..formats.bzimage import HDRS_MAGIC, SETUP_HEADER, STARTUP_64_OFFSET, setup_size
from ..machine.ranges import U64_MAX, human_size
from .kexec_buf import KEXEC_SEGMENT_MAX
from .linux import destination_limit
from .loadplan import Violation

if TYPE_CHECKING:
    from .loadplan import LoadPlan

XEN_KERNEL_ALIGN_MIN, XEN_KERNEL_ALIGN_MAX, XEN_KERNEL_ALIGN_UNIT = 0x200000, 0x1000000, 0x200000


def validate_linux(plan: "LoadPlan", *, file_mode: bool | None = None) -> tuple[Violation, ...]:
    machine = plan.machine
    page = machine.page_size
    segs = plan.segments
    file_mode = plan.target == "linux-file" if file_mode is None else file_mode
    out: list[Violation] = []
    limit = destination_limit(plan.arch, machine)
    for i, s in enumerate(segs):
        mend = s.mem + s.memsz
        if mend > U64_MAX:
            out.append(Violation("no-wrap", "EADDRNOTAVAIL", f"{s.mem:#x} + {s.memsz:#x} wraps past 2^64",
                                 i, s.role))
            continue
        if s.mem % page or mend % page:
            out.append(Violation("page-aligned", "EADDRNOTAVAIL",
                                 f"[{s.mem:#x}, {mend:#x}) is not aligned to the {page}-byte page", i, s.role))
        if mend >= limit:
            out.append(Violation("destination-limit", "EADDRNOTAVAIL",
                                 f"ends at {mend:#x}, past KEXEC_DESTINATION_MEMORY_LIMIT {limit:#x}", i, s.role))
    for i, s in enumerate(segs):
        for j in range(i):
            p = segs[j]
            if s.mem + s.memsz > p.mem and s.mem < p.mem + p.memsz:
                out.append(Violation("overlap", "EINVAL",
                                     f"[{s.mem:#x}, {s.mem + s.memsz:#x}) overlaps segment {j} ({p.role}) "
                                     f"[{p.mem:#x}, {p.mem + p.memsz:#x})", i, s.role))
    for i, s in enumerate(segs):
        if s.bufsz > s.memsz:
            out.append(Violation("bufsz-le-memsz", "EINVAL",
                                 f"buffer of {s.bufsz:#x} bytes is larger than its {s.memsz:#x}-byte memory",
                                 i, s.role))
    total = machine.totalram()
    if total:
        half = (total // page) // 2
        pages = 0
        for i, s in enumerate(segs):
            n = -(-s.memsz // page)
            pages += n
            if n > half:
                out.append(Violation("half-of-ram", "EINVAL",
                                     f"needs {human_size(s.memsz)}, more than half of the "
                                     f"{human_size(total)} of RAM", i, s.role))
        if pages > half and not any(v.rule == "half-of-ram" for v in out):
            out.append(Violation("half-of-ram", "EINVAL",
                                 f"the segments together need {human_size(pages * page)}, more than half "
                                 f"of the {human_size(total)} of RAM"))
    if plan.crash:
        region = machine.crashk_res
        for i, s in enumerate(segs):
            if region is None:
                out.append(Violation("crash-region", "EADDRNOTAVAIL",
                                     "no crash region is reserved (boot with crashkernel=)", i, s.role))
            elif s.mem < region.start or s.mem + s.memsz - 1 > region.last:
                out.append(Violation("crash-region", "EADDRNOTAVAIL",
                                     f"[{s.mem:#x}, {s.mem + s.memsz:#x}) is outside the crash region "
                                     f"{region}", i, s.role))
    if not file_mode:
        if machine.lockdown not in (None, "none"):
            out.append(Violation("lockdown", "EPERM",
                                 f"the kernel is locked down ({machine.lockdown}); kexec_load is refused "
                                 "(LOCKDOWN_KEXEC), only signed kexec_file_load loads are allowed"))
        if len(segs) > KEXEC_SEGMENT_MAX:
            out.append(Violation("segment-count", "EINVAL",
                                 f"{len(segs)} segments; kexec_load takes at most {KEXEC_SEGMENT_MAX}"))
    elif len(segs) > KEXEC_SEGMENT_MAX:
        out.append(Violation("segment-count", "EINVAL",
                             f"{len(segs)} segments; kexec_add_buffer stops at {KEXEC_SEGMENT_MAX}"))
    return tuple(out)


def validate_xen(plan: "LoadPlan") -> tuple[Violation, ...]:
    machine = plan.machine
    segs = plan.segments
    page = 4096  # Xen's PAGE_SIZE on x86
    out: list[Violation] = []
    kexec_type = plan.kexec_type or ("KEXEC_TYPE_CRASH" if plan.crash else "KEXEC_TYPE_DEFAULT")
    if len(segs) >= KEXEC_SEGMENT_MAX:
        out.append(Violation("segment-count", "EINVAL",
                             f"{len(segs)} segments (null ones included); Xen refuses nr_segments >= "
                             f"{KEXEC_SEGMENT_MAX}"))
    if kexec_type in ("KEXEC_TYPE_CRASH", "KEXEC_TYPE_CRASH_EFI"):
        area = machine.xen_crash_area
        if kexec_type == "KEXEC_TYPE_CRASH" and area is not None and not (
                area.start <= plan.entry <= area.start + area.size):
            out.append(Violation("crash-entry", "EADDRNOTAVAIL",
                                 f"entry {plan.entry:#x} is outside the Xen crash area {area}"))
        for i, s in enumerate(segs):
            if s.null:
                continue
            if area is None:
                out.append(Violation("crash-region", "EADDRNOTAVAIL",
                                     "the Xen crash area is unknown or not reserved (crashkernel= on Xen's "
                                     "command line)", i, s.role))
            elif s.mem < area.start or s.mem + s.memsz > area.end:
                out.append(Violation("crash-region", "EADDRNOTAVAIL",
                                     f"[{s.mem:#x}, {s.mem + s.memsz:#x}) is outside the Xen crash area "
                                     f"{area}", i, s.role))
    for i, s in enumerate(segs):
        if s.mem % page or (s.mem + s.memsz) % page:
            out.append(Violation("page-aligned", "EADDRNOTAVAIL",
                                 f"[{s.mem:#x}, {s.mem + s.memsz:#x}) is not page-aligned", i, s.role))
    for i, s in enumerate(segs):
        for j in range(i):
            p = segs[j]
            if s.mem + s.memsz > p.mem and s.mem < p.mem + p.memsz:
                out.append(Violation("overlap", "EINVAL",
                                     f"[{s.mem:#x}, {s.mem + s.memsz:#x}) overlaps segment {j} ({p.role})",
                                     i, s.role))
    for i, s in enumerate(segs):
        if s.bufsz > s.memsz:
            out.append(Violation("bufsz-le-memsz", "EINVAL",
                                 f"buf_size {s.bufsz:#x} is larger than dest_size {s.memsz:#x}", i, s.role))
    if kexec_type == "KEXEC_TYPE_CRASH_EFI":
        out.extend(_xen_efi_kernel(plan))
    return tuple(out)


def _xen_efi_kernel(plan: "LoadPlan") -> list[Violation]:
    """kimage_find_kernel_entry_maddr (seed 000), on segment 0's bytes."""
    if not plan.segments:
        return [Violation("efi-kernel", "EINVAL", "no segment 0 holding the kernel")]
    seg = plan.segments[0]
    data = seg.buffer
    offset = seg.offset
    if data is None or len(data) < SETUP_HEADER.offset("cmdline_size"):   # through xloadflags
        return [Violation("efi-kernel", "EINVAL", "segment 0 does not hold a bzImage header", 0, seg.role)]
    magic = SETUP_HEADER.get(data, "header")
    version = SETUP_HEADER.get(data, "version")
    alignment = SETUP_HEADER.get(data, "kernel_alignment")
    kern16 = setup_size(SETUP_HEADER.get(data, "setup_sects"))
    out = []
    if magic != HDRS_MAGIC or version < 0x0202:
        out.append(Violation("efi-kernel-header", "EINVAL",
                             f"segment 0 has magic {magic:#x} and protocol {version >> 8}.{version & 0xff:02d}; "
                             "Xen needs 'HdrS' and 2.02 or later", 0, seg.role))
        return out
    if alignment % XEN_KERNEL_ALIGN_UNIT or not XEN_KERNEL_ALIGN_MIN <= alignment <= XEN_KERNEL_ALIGN_MAX:
        out.append(Violation("efi-kernel-alignment", "EINVAL",
                             f"kernel_alignment {alignment:#x} is not a multiple of 2 MiB within "
                             "[2 MiB, 16 MiB] (a valid LOAD_PHYSICAL_ADDR)", 0, seg.role))
        return out
    dest = seg.mem + offset
    if (dest + kern16) % alignment:
        out.append(Violation("efi-kernel-alignment", "EINVAL",
                             f"the protected-mode kernel would start at {dest + kern16:#x}, not aligned to "
                             f"kernel_alignment {alignment:#x}", 0, seg.role))
    elif plan.entry != dest + kern16 + STARTUP_64_OFFSET:
        out.append(Violation("efi-entry", "EINVAL",
                             f"entry {plan.entry:#x} is not where Xen will enter "
                             f"({dest + kern16 + STARTUP_64_OFFSET:#x} = dest + (setup_sects + 1) * 512 + 0x200)",
                             0, seg.role))
    return out

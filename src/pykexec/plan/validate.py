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
4. the EFI types, on segment 0, the v2 series' ``kimage_find_kernel_entry_maddr``
   (seed 000): "HdrS" magic and version >= 2.02, kernel_alignment a multiple
   of 2 MiB in [2 MiB, 16 MiB], ``dest + (setup_sects + 1) * 512`` aligned to
   it -> EINVAL.  XenServer's Xen (``xen-efi``) checks only the alignment's
   range, and even that refusal is lost (its ``rip < 0`` test is on a
   ``uint64_t``): it enters at ``ROUNDUP(dest, kernel_alignment) + 0x200``
   whatever segment 0 holds, so pykexec keeps the v2 checks for both and adds
   that this address is the plan's entry;
5. XenServer's EFI types: ``kimage_purgatory_find_hole`` finds no room for
   Xen's own purgatory in the crash area -> ENOMEM

Each check is a small rule returning its violations; the two validators are
lists of rules (:data:`LINUX_RULES`, :data:`XEN_RULES`), and the checks both
receivers make (page alignment, overlap, bufsz <= memsz, the segment count)
are one rule each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from ..formats.bzimage import HDRS_MAGIC, SETUP_HEADER, STARTUP_64_OFFSET, setup_size
from ..machine.ranges import U64_MAX, human_size
from .kexec_buf import KEXEC_SEGMENT_MAX, Segment
from .linux import destination_limit
from .loadplan import Violation

if TYPE_CHECKING:
    from .loadplan import LoadPlan

XEN_KERNEL_ALIGN_MIN, XEN_KERNEL_ALIGN_MAX, XEN_KERNEL_ALIGN_UNIT = 0x200000, 0x1000000, 0x200000
XEN_PAGE_SIZE = 4096   # Xen's PAGE_SIZE on x86

#: A rule: every violation of one of the receiver's checks in a plan, in the receiver's order.
Rule = Callable[["LoadPlan"], Iterable[Violation]]
#: A check of one segment (plan, index, segment): its violation, or None.
SegmentCheck = Callable[["LoadPlan", int, Segment], "Violation | None"]


# -- checks both receivers make ------------------------------------------------------------------

def each_segment(*checks: SegmentCheck) -> Rule:
    """``checks`` on each segment in turn, as one loop over the segments; a segment that fails
    the first check gets no others (a wrapped end makes them meaningless)."""
    def rule(plan: "LoadPlan") -> Iterable[Violation]:
        for i, s in enumerate(plan.segments):
            for n, check in enumerate(checks):
                v = check(plan, i, s)
                if v is not None:
                    yield v
                    if n == 0:
                        break
    return rule


def page_aligned(page_size: Callable[["LoadPlan"], int]) -> SegmentCheck:
    """Start and end on a page boundary of the receiver's page size -> EADDRNOTAVAIL."""
    def check(plan: "LoadPlan", i: int, s: Segment) -> Violation | None:
        page = page_size(plan)
        if s.mem % page or (s.mem + s.memsz) % page:
            return Violation("page-aligned", "EADDRNOTAVAIL",
                             f"[{s.mem:#x}, {s.mem + s.memsz:#x}) is not aligned to the {page}-byte page",
                             i, s.role)
        return None
    return check


def no_overlap(plan: "LoadPlan") -> Iterable[Violation]:
    """No two segments share a byte -> EINVAL, reported on the later one."""
    segs = plan.segments
    for i, s in enumerate(segs):
        for j, p in enumerate(segs[:i]):
            if s.mem + s.memsz > p.mem and s.mem < p.mem + p.memsz:
                yield Violation("overlap", "EINVAL",
                                f"[{s.mem:#x}, {s.mem + s.memsz:#x}) overlaps segment {j} ({p.role}) "
                                f"[{p.mem:#x}, {p.mem + p.memsz:#x})", i, s.role)


def bufsz_within_memsz(plan: "LoadPlan") -> Iterable[Violation]:
    """A segment's bytes fit its memory (Linux bufsz <= memsz, Xen buf_size <= dest_size) -> EINVAL."""
    for i, s in enumerate(plan.segments):
        if s.bufsz > s.memsz:
            yield Violation("bufsz-le-memsz", "EINVAL",
                            f"buffer of {s.bufsz:#x} bytes is larger than its {s.memsz:#x}-byte memory",
                            i, s.role)


def segment_count(limit: int, words: str) -> Rule:
    """At most ``limit`` segments -> EINVAL; ``words`` follow the count and say who refuses more."""
    def rule(plan: "LoadPlan") -> Iterable[Violation]:
        if len(plan.segments) > limit:
            yield Violation("segment-count", "EINVAL", f"{len(plan.segments)} segments{words}")
    return rule


# -- Linux: kernel/kexec_core.c sanity_check_segment_list, kernel/kexec.c kexec_load_check ----------

def _no_wrap(plan: "LoadPlan", i: int, s: Segment) -> Violation | None:
    if s.mem + s.memsz > U64_MAX:
        return Violation("no-wrap", "EADDRNOTAVAIL", f"{s.mem:#x} + {s.memsz:#x} wraps past 2^64", i, s.role)
    return None


def _below_destination_limit(plan: "LoadPlan", i: int, s: Segment) -> Violation | None:
    limit = destination_limit(plan.arch, plan.machine)
    if s.mem + s.memsz >= limit:
        return Violation("destination-limit", "EADDRNOTAVAIL",
                         f"ends at {s.mem + s.memsz:#x}, past KEXEC_DESTINATION_MEMORY_LIMIT {limit:#x}",
                         i, s.role)
    return None


def _half_of_ram(plan: "LoadPlan") -> Iterable[Violation]:
    total = plan.machine.totalram()
    if not total:
        return
    page = plan.machine.page_size
    half = (total // page) // 2
    pages, alone = 0, False
    for i, s in enumerate(plan.segments):
        n = -(-s.memsz // page)
        pages += n
        if n > half:
            alone = True
            yield Violation("half-of-ram", "EINVAL", f"needs {human_size(s.memsz)}, more than half of the "
                            f"{human_size(total)} of RAM", i, s.role)
    if pages > half and not alone:
        yield Violation("half-of-ram", "EINVAL", f"the segments together need {human_size(pages * page)}, "
                        f"more than half of the {human_size(total)} of RAM")


def _linux_crash_region(plan: "LoadPlan") -> Iterable[Violation]:
    if not plan.crash:
        return
    region = plan.machine.crashk_res
    for i, s in enumerate(plan.segments):
        if region is None:
            yield Violation("crash-region", "EADDRNOTAVAIL",
                            "no crash region is reserved (boot with crashkernel=)", i, s.role)
        elif s.mem < region.start or s.mem + s.memsz - 1 > region.last:
            yield Violation("crash-region", "EADDRNOTAVAIL",
                            f"[{s.mem:#x}, {s.mem + s.memsz:#x}) is outside the crash region {region}", i, s.role)


def _lockdown(plan: "LoadPlan") -> Iterable[Violation]:
    lockdown = plan.machine.lockdown
    if lockdown not in (None, "none"):
        yield Violation("lockdown", "EPERM", f"the kernel is locked down ({lockdown}); kexec_load is refused "
                        "(LOCKDOWN_KEXEC), only signed kexec_file_load loads are allowed")


LINUX_RULES: tuple[Rule, ...] = (
    each_segment(_no_wrap, page_aligned(lambda plan: plan.machine.page_size), _below_destination_limit),
    no_overlap, bufsz_within_memsz, _half_of_ram, _linux_crash_region,
)
#: kexec_load also runs kexec_load_check; kexec_file_load refuses a 17th kexec_add_buffer instead.
LINUX_LOAD_RULES = LINUX_RULES + (_lockdown, segment_count(KEXEC_SEGMENT_MAX,
                                                           f"; kexec_load takes at most {KEXEC_SEGMENT_MAX}"))
LINUX_FILE_RULES = LINUX_RULES + (segment_count(KEXEC_SEGMENT_MAX,
                                                f"; kexec_add_buffer stops at {KEXEC_SEGMENT_MAX}"),)


def validate_linux(plan: "LoadPlan", *, file_mode: bool | None = None) -> tuple[Violation, ...]:
    file_mode = plan.target == "linux-file" if file_mode is None else file_mode
    return _run(LINUX_FILE_RULES if file_mode else LINUX_LOAD_RULES, plan)


# -- Xen: xen/common/kexec.c kexec_load, xen/common/kimage.c ---------------------------------------

def _xen_type(plan: "LoadPlan") -> str:
    return plan.kexec_type or ("KEXEC_TYPE_CRASH" if plan.crash else "KEXEC_TYPE_DEFAULT")


def _xen_crash_area(plan: "LoadPlan") -> Iterable[Violation]:
    kexec_type = _xen_type(plan)
    if kexec_type not in ("KEXEC_TYPE_CRASH", "KEXEC_TYPE_CRASH_EFI"):
        return
    area = plan.machine.xen_crash_area
    if kexec_type == "KEXEC_TYPE_CRASH" and area is not None and not (
            area.start <= plan.entry <= area.start + area.size):
        yield Violation("crash-entry", "EADDRNOTAVAIL", f"entry {plan.entry:#x} is outside the Xen crash area {area}")
    for i, s in enumerate(plan.segments):
        if s.null:
            continue
        if area is None:
            yield Violation("crash-region", "EADDRNOTAVAIL", "the Xen crash area is unknown or not reserved "
                            "(crashkernel= on Xen's command line)", i, s.role)
        elif s.mem < area.start or s.mem + s.memsz > area.end:
            yield Violation("crash-region", "EADDRNOTAVAIL",
                            f"[{s.mem:#x}, {s.mem + s.memsz:#x}) is outside the Xen crash area {area}", i, s.role)


XEN_EFI_TYPES = ("KEXEC_TYPE_CRASH_EFI", "KEXEC_TYPE_DEFAULT_EFI")


def _xen_efi_kernel_rule(plan: "LoadPlan") -> Iterable[Violation]:
    return _xen_efi_kernel(plan) if _xen_type(plan) in XEN_EFI_TYPES else ()


def _xenserver_efi_rule(plan: "LoadPlan") -> Iterable[Violation]:
    """XenServer's entry (ROUNDUP(dest, kernel_alignment) + 0x200) and its purgatory's room."""
    if plan.target != "xen-efi" or _xen_type(plan) not in XEN_EFI_TYPES or not plan.segments:
        return
    from .xen import XENSERVER_PURGATORY_MEMSZ, xen_purgatory_at
    seg = plan.segments[0]
    data = seg.buffer
    if data is not None and len(data) >= SETUP_HEADER.offset("cmdline_size"):
        alignment = SETUP_HEADER.get(data, "kernel_alignment")
        dest = seg.mem + seg.offset
        if alignment and -(-dest // alignment) * alignment + STARTUP_64_OFFSET != plan.entry:
            yield Violation("efi-entry", "EINVAL",
                            f"XenServer's Xen enters at ROUNDUP({dest:#x}, {alignment:#x}) + 0x200, not at the "
                            f"kernel's 64-bit entry {plan.entry:#x}", 0, seg.role)
    if xen_purgatory_at(plan.machine, plan.segments) < 0:
        yield Violation("efi-purgatory", "ENOMEM",
                        f"Xen's crash area {plan.machine.xen_crash_area} has no free "
                        f"{human_size(XENSERVER_PURGATORY_MEMSZ)} for Xen's own purgatory "
                        "(crashkernel= on Xen's command line)")


XEN_RULES: tuple[Rule, ...] = (
    # nr_segments >= KEXEC_SEGMENT_MAX: so 16 is refused
    segment_count(KEXEC_SEGMENT_MAX - 1,
                  f" (null ones included); Xen refuses nr_segments >= {KEXEC_SEGMENT_MAX}"),
    _xen_crash_area,
    each_segment(page_aligned(lambda plan: XEN_PAGE_SIZE)),
    no_overlap, bufsz_within_memsz, _xen_efi_kernel_rule, _xenserver_efi_rule,
)


def validate_xen(plan: "LoadPlan") -> tuple[Violation, ...]:
    return _run(XEN_RULES, plan)


def _run(rules: Iterable[Rule], plan: "LoadPlan") -> tuple[Violation, ...]:
    return tuple(v for rule in rules for v in rule(plan))


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

"""Xen targets: a bzImage loaded by dom0 through Xen's KEXEC_CMD_kexec_load.

``xen`` (KEXEC_TYPE_DEFAULT / KEXEC_TYPE_CRASH) plans the kexec_load
bzImage64 layout (see :mod:`.x86`) and then does what kexec-tools
kexec/kexec-xen.c ``xen_kexec_load`` does: with the segments sorted, add
null segments (no buffer) filling every gap below 1 MiB, so that Xen
identity-maps the low 1 MiB for the purgatory and VGA (seed 004: "kexec adds
a mapping of the 0-1MiB region ... I have fixed this to fill in between any
gaps below 1MiB").  Null segments count towards Xen's limit of 15.  Crash
loads go in Xen's ``kexec_crash_area`` (xc_kexec_get_range
KEXEC_RANGE_MA_CRASH), which dom0 cannot read from /proc/iomem.

``xen-efi`` and ``xen-efi-v2`` are Xen's EFI load types, for Secure Boot: no
purgatory from dom0; segment 0 is the whole bzImage, placed so that its
protected-mode kernel (``dest + (setup_sects + 1) * 512``) is aligned to
kernel_alignment, which leaves segment 0 starting mid-page (its page-aligned
start is ``Segment.mem``, the byte offset ``Segment.offset``; Xen takes the
byte address in ``dest_maddr`` and keeps the page offset as ``dest_offset``);
the boot_params address goes in ``parameters``, the union with
``entry_maddr``.  The two targets are the two variants (docs/xen.md, "The EFI
load types"):

* ``xen-efi``: XenServer's Xen 4.20 (``xenserver-next/xen`` 85d0be0de4 and
  19b98a02d5), the one Xen that ships them: ``KEXEC_TYPE_DEFAULT_EFI`` (2) and
  ``KEXEC_TYPE_CRASH_EFI`` (3); Xen loads its own purgatory into the first
  free pages of its crash area (for both types), which sets %rsi and jumps to
  ``ROUNDUP(dest, kernel_alignment) + 0x200``;
* ``xen-efi-v2``: the series posted to xen-devel (seed 000, v2 5/7), crash
  only (``KEXEC_TYPE_CRASH_EFI``), no purgatory at all; Xen enters at
  ``dest + (setup_sects + 1) * 512 + 0x200`` after checking "HdrS", the
  protocol and the alignment.

Both plans keep the v2 checks (:func:`pykexec.plan.validate._xen_efi_kernel`),
which XenServer's Xen makes only in part; with segment 0 placed as here both
Xens enter at the same address.  As for ``xen``, null segments map the low
1 MiB (the kernel's 64-bit entry reads the BIOS data area); they follow
segment 0, which must stay first.
"""

from __future__ import annotations

from ..boot.bootparam import RNG_SEED_LENGTH, SIZEOF_BOOT_PARAMS
from ..errors import PlacementError, UsageError
from ..formats.bzimage import STARTUP_64_OFFSET, BzImage
from ..machine.model import Machine
from ..machine.ranges import MiB, PAGE_SIZE, align_down, align_up, human_size
from .common import PurgatorySize, crash_walk, normal_walks, place
from .kexec_buf import KexecBuf, Placer, Segment
from .loadplan import LoadPlan
from .validate import XEN_KERNEL_ALIGN_MAX, XEN_KERNEL_ALIGN_MIN, XEN_KERNEL_ALIGN_UNIT
from .x86 import (DEFAULT_EFI_MEMDESC_SIZE, MAX_ELFCOREHDR_STR_LEN, SIZEOF_EFI_SETUP_DATA, SIZEOF_SETUP_DATA,
                  build_user_segments, probe_user)
from .linux import user_elfcorehdr_size

IDENTMAP_1MIB = 1 << 20


def null_segments_below_1mib(segments: list[Segment]) -> list[Segment]:
    """kexec-tools ``xen_kexec_load``: sorted segments, with null ones filling the gaps below 1 MiB."""
    out: list[Segment] = []
    low = 0
    for seg in sorted(segments, key=lambda s: s.mem):
        if low < IDENTMAP_1MIB and seg.mem > low:
            top = min(seg.mem, IDENTMAP_1MIB)
            out.append(Segment("identity-map", low, top - low, 0, None, null=True))
        out.append(seg)
        low = seg.mem + seg.memsz
    if low < IDENTMAP_1MIB:
        out.append(Segment("identity-map", low, IDENTMAP_1MIB - low, 0, None, null=True))
    return out


def plan_xen(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
             cmdline: str | None, purgatory: PurgatorySize) -> LoadPlan:
    probe_user(layer, data)
    placer = Placer(page_size=PAGE_SIZE, exact_top_down=True, max_segments=None)
    walks = [crash_walk(machine, xen=True)] if crash else normal_walks(machine, file_mode=False, rev_walk=True)
    pur, setup, final, notes = build_user_segments(layer, data, machine=machine, crash=crash, initrd=initrd,
                                                   cmdline=cmdline, walks=walks, placer=placer,
                                                   purgatory=purgatory)
    segments = null_segments_below_1mib(placer.segments)
    if machine.memory_source != "xen":
        notes.append("placed in the dom0 view of memory; kexec-tools asks Xen for the machine map "
                     "(xc_get_machine_memory_map), which can differ")
    return LoadPlan(target="xen", crash=crash, entry=pur.mem + purgatory.entry_offset, cmdline=final,
                    segments=tuple(segments), arch="x86_64", machine=machine, entry_arg=setup.mem,
                    kexec_type="KEXEC_TYPE_CRASH" if crash else "KEXEC_TYPE_DEFAULT", notes=tuple(notes))


#: Xen's own purgatory on XenServer's Xen: what ``kimage_purgatory_alloc`` reserves (bufsz + bss of
#: xen/arch/x86/purgatory/purgatory.ro as embedded in the build of 19b98a02d5: .text, .rodata,
#: .eh_frame, a page-aligned 8 KiB .data (its stack) and a 4 KiB .bss)
XENSERVER_PURGATORY_MEMSZ = 0x4000
#: the target for each variant, and its load types (crash, default)
XEN_EFI_VARIANTS = {
    "xen-efi": ("XenServer's Xen 4.20 (xenserver-next/xen 19b98a02d5)",
                "KEXEC_TYPE_CRASH_EFI", "KEXEC_TYPE_DEFAULT_EFI"),
    "xen-efi-v2": ("the posted v2 series (xen-devel, 2026-06; not in any released Xen)",
                   "KEXEC_TYPE_CRASH_EFI", None),
}


def plan_xen_efi(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
                 cmdline: str | None) -> LoadPlan:
    """XenServer's EFI load types (DEFAULT_EFI and CRASH_EFI, Xen's purgatory in its crash area)."""
    return _plan_efi("xen-efi", layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline)


def plan_xen_efi_v2(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
                    cmdline: str | None) -> LoadPlan:
    """The posted v2 series: CRASH_EFI only, no purgatory."""
    return _plan_efi("xen-efi-v2", layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline)


def check_efi_kernel(layer: BzImage) -> None:
    """The v2 series' ``kimage_find_kernel_entry_maddr`` checks, made before placing anything."""
    if layer.protocol < 0x0202:
        raise PlacementError(f"Xen's EFI load types need boot protocol 2.02 or later; this bzImage has "
                             f"{layer.version}", errno="EINVAL")
    align = layer.kernel_alignment
    if align % XEN_KERNEL_ALIGN_UNIT or not XEN_KERNEL_ALIGN_MIN <= align <= XEN_KERNEL_ALIGN_MAX:
        raise PlacementError(f"kernel_alignment {align:#x} is not a multiple of 2 MiB within [2 MiB, 16 MiB]; "
                             "Xen's EFI load types refuse it", role="kernel", errno="EINVAL")
    if layer.init_size is None:
        raise PlacementError("the bzImage has no init_size (protocol before 2.10)", errno="ENOEXEC")


def _plan_efi(target: str, layer: BzImage, data: bytes, *, machine: Machine, crash: bool,
              initrd: bytes | None, cmdline: str | None) -> LoadPlan:
    variant, crash_type, default_type = XEN_EFI_VARIANTS[target]
    if not crash and default_type is None:
        raise UsageError(f"{target} is {variant}, which has only KEXEC_TYPE_CRASH_EFI; add --crash "
                         "(XenServer's Xen, --target xen-efi, also has KEXEC_TYPE_DEFAULT_EFI)")
    check_efi_kernel(layer)
    purgatory = target == "xen-efi"
    if purgatory and machine.xen_crash_area is None:
        raise PlacementError("XenServer's Xen puts its own purgatory in its crash area, for default loads "
                             "too, but Xen has none reserved (crashkernel= on Xen's command line)",
                             errno="ENOMEM")
    walks = [crash_walk(machine, xen=True)] if crash else normal_walks(machine, file_mode=False, rev_walk=True)
    placer = Placer(page_size=PAGE_SIZE, exact_top_down=True, max_segments=None)
    kernel = _place_kernel(layer, data, walks, crash=crash)
    placer.add_fixed(kernel)
    if purgatory:   # keep Xen's first fit in its crash area free: the purgatory goes there
        at = xen_purgatory_at(machine, [kernel])
        if at < 0:
            raise PlacementError(f"Xen's crash area {machine.xen_crash_area} has no "
                                 f"{human_size(XENSERVER_PURGATORY_MEMSZ)} left beside the kernel for Xen's "
                                 "own purgatory", errno="ENOMEM")
        placer.add_fixed(Segment("xen-purgatory", at, XENSERVER_PURGATORY_MEMSZ, 0, None))
    params_size = _params_size(machine, cmdline, crash)
    params = place(placer, KexecBuf("boot-params", params_size, params_size, buf_min=MiB, top_down=False), walks)
    if initrd is not None:
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), buf_min=MiB, top_down=False, buffer=initrd),
              walks)
    final = cmdline or ""
    if crash:
        bufsz, memsz = user_elfcorehdr_size(machine)
        elf = place(placer, KexecBuf("elfcorehdr", bufsz, memsz, top_down=False), walks)
        final = f"{final} elfcorehdr={elf.mem >> 10}K".lstrip()
    if len(final.encode()) + 1 > layer.cmdline_size:
        raise PlacementError(f"the command line{' with elfcorehdr=' if crash else ''} is "
                             f"{len(final.encode()) + 1} bytes; this kernel takes at most {layer.cmdline_size}",
                             errno="EINVAL")
    segments = [s for s in placer.segments if s.role != "xen-purgatory"]
    segments = [kernel, *(s for s in segments if s is not kernel),
                *(s for s in null_segments_below_1mib(segments) if s.null)]
    notes = [f"planned for {variant}",
             f"segment 0 is the whole bzImage from {kernel.mem + kernel.offset:#x} ({kernel.offset:#x} into its "
             f"first page: dest_maddr), its protected-mode kernel at {kernel.mem + kernel.offset + layer.setup_size:#x}",
             "boot_params, setup_data and elfcorehdr are built by the loader; sizes assume one "
             "page of boot_params, the command line and an RNG seed"]
    if purgatory:
        at = xen_purgatory_at(machine, segments)
        notes.append(f"Xen loads its own purgatory ({human_size(XENSERVER_PURGATORY_MEMSZ)}) at {at:#x}, the "
                     "first free pages of its crash area" + ("" if crash else
                                                              ", overwriting any crash image there"))
    if not crash and machine.memory_source != "xen":
        notes.append("placed in the dom0 view of memory; Xen's machine map can differ")
    return LoadPlan(target=target, crash=crash, entry=kernel.mem + kernel.offset + layer.setup_size
                    + STARTUP_64_OFFSET, cmdline=final, segments=tuple(segments), arch="x86_64", machine=machine,
                    entry_arg=params.mem, kexec_type=crash_type if crash else default_type, notes=tuple(notes))


def _place_kernel(layer: BzImage, data: bytes, walks: list, *, crash: bool) -> Segment:
    """Segment 0: the whole bzImage at ``dest`` with ``dest + setup_size`` on kernel_alignment.

    The protected-mode kernel K is aligned and the setup code sits below it, so the segment's pages run
    from ``K - ROUNDUP(setup_size, page)`` to the end of ``max(file, setup_size + init_size)``.  A crash
    load takes the lowest such K in the crash area (kexec-tools' order: the kernel first, from the
    bottom); a default load the lowest above 16 MiB."""
    align, kern16 = layer.kernel_alignment, layer.setup_size
    below = align_up(kern16, PAGE_SIZE)
    above = align_up(max(len(data), kern16 + layer.init_size) - kern16, PAGE_SIZE)
    scratch = Placer(page_size=PAGE_SIZE, exact_top_down=True, max_segments=None)
    window = place(scratch, KexecBuf("kernel", align + above, align + above, buf_align=align,
                                     buf_min=0 if crash else 16 * MiB, top_down=False), walks)
    k = window.mem + align
    if crash and k - align >= walks[0].ranges[0].start + below:   # the window's own start would do
        k -= align
    dest = k - kern16
    mem = align_down(dest, PAGE_SIZE)
    return Segment("kernel", mem, k + above - mem, len(data), data, offset=dest - mem)


def xen_purgatory_at(machine: Machine, segments) -> int:
    """Where XenServer's ``kimage_purgatory_find_hole`` puts its purgatory: the first page-aligned
    hole of :data:`XENSERVER_PURGATORY_MEMSZ` from the crash area's start that overlaps none of the
    image's segments (their pages, null ones included); -1 when there is none (Xen: ENOMEM)."""
    area = machine.xen_crash_area
    if area is None:
        return -1
    start = align_up(area.start, PAGE_SIZE)
    busy = sorted((s.mem, s.mem + s.memsz) for s in segments)
    moved = True
    while moved and start + XENSERVER_PURGATORY_MEMSZ <= area.end:
        moved = False
        for lo, hi in busy:
            if start + XENSERVER_PURGATORY_MEMSZ > lo and start < hi:
                start, moved = align_up(hi, PAGE_SIZE), True
                break
    return start if start + XENSERVER_PURGATORY_MEMSZ <= area.end else -1


def _params_size(machine: Machine, cmdline: str | None, crash: bool) -> int:
    """boot_params (a page), the command line (with room for `` elfcorehdr=<KiB>K``), and an RNG seed."""
    cmdline_len = len((cmdline or "").encode()) + 1 + (MAX_ELFCOREHDR_STR_LEN if crash else 0)
    size = SIZEOF_BOOT_PARAMS + align_up(cmdline_len, 16) + SIZEOF_SETUP_DATA + RNG_SEED_LENGTH
    if machine.efi:
        size += SIZEOF_SETUP_DATA + SIZEOF_EFI_SETUP_DATA + (machine.efi_runtime_map_entries or 0) * (
            machine.efi_memdesc_size or DEFAULT_EFI_MEMDESC_SIZE)
    return size

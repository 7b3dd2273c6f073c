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

``xen-efi`` is KEXEC_TYPE_CRASH_EFI (seed 000, "x86/kexec: Implement new EFI
load type", proposed for Xen 4.21+): no purgatory; segment 0 is the whole
bzImage, placed so that ``dest + (setup_sects + 1) * 512`` is aligned to
kernel_alignment; Xen enters at that address + 0x200 with %rsi = the
``parameters`` the caller passes (the boot_params address).  It is a crash
type only (there is no DEFAULT_EFI).  Segment 0 may start mid-page (the
series adds ``dest_offset``); its page-aligned ``dest_maddr`` is the segment
address here and the offset is kept in ``Segment.offset``.
"""

from __future__ import annotations

from ..boot.bootparam import RNG_SEED_LENGTH, SIZEOF_BOOT_PARAMS
from ..errors import PlacementError, UsageError
from ..formats.bzimage import STARTUP_64_OFFSET, BzImage
from ..machine.model import Machine
from ..machine.ranges import MiB, PAGE_SIZE, align_down, align_up
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


def plan_xen_efi(layer: BzImage, data: bytes, *, machine: Machine, crash: bool, initrd: bytes | None,
                 cmdline: str | None) -> LoadPlan:
    if not crash:
        raise UsageError("the xen-efi target is KEXEC_TYPE_CRASH_EFI, a crash load type "
                         "(Xen has no default EFI type); add --crash")
    if layer.protocol < 0x0202:
        raise PlacementError(f"Xen's CRASH_EFI needs boot protocol 2.02 or later; this bzImage has "
                             f"{layer.version}", errno="EINVAL")
    align = layer.kernel_alignment
    if align % XEN_KERNEL_ALIGN_UNIT or not XEN_KERNEL_ALIGN_MIN <= align <= XEN_KERNEL_ALIGN_MAX:
        raise PlacementError(f"kernel_alignment {align:#x} is not a multiple of 2 MiB within [2 MiB, 16 MiB]; "
                             "Xen's CRASH_EFI refuses it", role="kernel", errno="EINVAL")
    if layer.init_size is None:
        raise PlacementError("the bzImage has no init_size (protocol before 2.10)", errno="ENOEXEC")
    walk = crash_walk(machine, xen=True)
    area = walk.ranges[0]
    kern16 = layer.setup_size
    # The protected-mode kernel lands at an aligned K; the bzImage starts kern16 bytes before it.
    k = align_up(area.start + kern16, align)
    dest = k - kern16
    mem = align_down(dest, PAGE_SIZE)
    offset = dest - mem
    memsz = align_up(offset + max(len(data), kern16 + layer.init_size), PAGE_SIZE)
    if mem + memsz > area.end:
        raise PlacementError(f"the kernel needs {memsz:#x} bytes from {mem:#x} (aligned to "
                             f"{align:#x}) but the Xen crash area ends at {area.end:#x}",
                             role="kernel", errno="EADDRNOTAVAIL")
    placer = Placer(page_size=PAGE_SIZE, exact_top_down=True, max_segments=None)
    placer.add_fixed(Segment("kernel", mem, memsz, len(data), data, offset=offset))
    # The command line gets " elfcorehdr=<KiB>K" once the elfcorehdr is placed: keep room for it.
    cmdline_len = len((cmdline or "").encode()) + 1 + MAX_ELFCOREHDR_STR_LEN
    setup_size = SIZEOF_BOOT_PARAMS + cmdline_len + SIZEOF_SETUP_DATA + RNG_SEED_LENGTH
    if machine.efi:
        setup_size += SIZEOF_SETUP_DATA + SIZEOF_EFI_SETUP_DATA + (machine.efi_runtime_map_entries or 0) * (
            machine.efi_memdesc_size or DEFAULT_EFI_MEMDESC_SIZE)
    params = place(placer, KexecBuf("boot-params", setup_size, setup_size, buf_align=16, top_down=False), [walk])
    if initrd is not None:
        place(placer, KexecBuf("initrd", len(initrd), len(initrd), top_down=False, buffer=initrd), [walk])
    bufsz, memsz = user_elfcorehdr_size(machine)
    elf = place(placer, KexecBuf("elfcorehdr", bufsz, memsz, top_down=False), [walk])
    final = f"{cmdline or ''} elfcorehdr={elf.mem >> 10}K".lstrip()
    if len(final.encode()) + 1 > layer.cmdline_size:
        raise PlacementError(f"the command line with elfcorehdr= is {len(final.encode()) + 1} bytes; this "
                             f"kernel takes at most {layer.cmdline_size}", errno="EINVAL")
    entry = dest + kern16 + STARTUP_64_OFFSET
    notes = ["KEXEC_TYPE_CRASH_EFI is proposed (xen-devel, 2026-06), not in a released Xen",
             "boot_params, setup_data and elfcorehdr are built by the loader; sizes assume one "
             "page of boot_params, the command line and an RNG seed"]
    if area.start >= MiB and machine.memory_source != "xen":
        notes.append("the Xen crash area comes from the machine description")
    return LoadPlan(target="xen-efi", crash=True, entry=entry, cmdline=final, segments=tuple(placer.segments),
                    arch="x86_64", machine=machine, entry_arg=params.mem, kexec_type="KEXEC_TYPE_CRASH_EFI",
                    notes=tuple(notes))

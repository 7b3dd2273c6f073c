"""A complete Xen kexec load: the kexec_load build, at machine addresses, for KEXEC_CMD_kexec_load.

Xen's kexec (xen/common/kexec.c, kimage.c) takes what Linux's kexec_load
takes: segments of bytes with their machine destinations and an entry.  So
the build is :func:`pykexec.boot.usermode.build_user_load` (pykexec's
purgatory; boot_params for a bzImage, Multiboot information for Xen itself)
on the machine as Xen describes it:

* memory: the machine map (``XENMEM_machine_memory_map``), not dom0's
  pseudo-physical /proc/iomem;
* crash loads: Xen's crash area (``KEXEC_RANGE_MA_CRASH``) takes the place of
  crashk_res, and the ELF core header has one PT_NOTE per physical CPU
  (``KEXEC_RANGE_MA_CPU``, where Xen writes its "CORE" and "Xen" notes on a
  crash) and one for Xen's vmcoreinfo (``KEXEC_RANGE_MA_VMCOREINFO``), as
  kexec-tools' crashdump-x86.c does under Xen.  dom0's own notes and
  vmcoreinfo are not passed: they are pseudo-physical.

Then, as kexec-tools' ``xen_kexec_load`` does, null segments (no buffer)
fill every gap below 1 MiB.  Xen's page tables for the image map exactly the
segments' destinations (``kimage_load_segment`` calls
``machine_kexec_add_page`` for each destination page, null segments
included) and the purgatory and the kernel's early code run on them: the
purgatory reads the first 640 KiB to back it up for a crash kernel, and a
bzImage's 64-bit entry reads the BIOS data area (``paging_prepare``).
Without the filler those reads fault (seed 004).

Null segments are not copied, so a segment whose bytes must be zero (the
crash backup area, which the purgatory checks is still zero) carries its
zeros explicitly: Xen zero-fills only past a non-null segment's buffer.

Finally the plan goes through Xen's own checks
(:func:`pykexec.plan.validate.validate_xen`); a plan Xen would refuse raises
:class:`~pykexec.errors.UserLoadRefused`.
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import LoadRefused, UserLoadRefused
from ..plan.xen import null_segments_below_1mib
from . import elfcore
from .usermode import UserLoad, build_user_load

#: memory sources that are dom0's own (pseudo-physical) view, never Xen's machine view
DOM0_VIEWS = ("iomem", "memmap", "fdt")


def crash_sources(machine) -> elfcore.CrashSources:
    """Xen's per-CPU crash notes and vmcoreinfo, as the ELF core header's PT_NOTEs."""
    notes = tuple(elfcore.Note(r.start, r.size, f"xen-cpu{i}") for i, r in enumerate(machine.xen_cpu_notes))
    info = machine.xen_vmcoreinfo
    unreadable = () if notes else (("xen cpu notes", "KEXEC_RANGE_MA_CPU gave none"),)
    return elfcore.CrashSources(cpu_notes=notes,
                                vmcoreinfo=None if info is None else elfcore.Note(info.start, info.size,
                                                                                   "xen-vmcoreinfo"),
                                unreadable=unreadable)


def build_xen_load(prepared, *, initrd, cmdline, crash: bool, machine, identity_map: bool = True,
                   **kw) -> UserLoad:
    """Build a Xen load of ``prepared`` (a :class:`pykexec.formats.prepare.Prepared`) on ``machine``.

    ``kw`` goes to :func:`build_user_load` (modules, checks, image_name, ...).
    ``identity_map=False`` leaves out the null segments below 1 MiB.
    """
    if machine.memory_source in DOM0_VIEWS:
        raise LoadRefused(f"Xen's machine memory map is unknown here (only dom0's {machine.memory_source} "
                          "was read); pykexec cannot place a load in machine memory without "
                          "XENMEM_machine_memory_map (load xen-privcmd and run as root in dom0)")
    view = machine
    if crash and machine.xen_crash_area is None:
        raise LoadRefused("a crash load goes into Xen's crash area, but Xen has none reserved (boot Xen "
                          "with crashkernel=SIZE@OFFSET on its own command line; see `pykexec machine`)")
    if crash:
        view = machine.with_changes(crashk_res=machine.xen_crash_area, crashk_low_res=None,
                                    kexec_crash_size=None)
        kw.setdefault("crash_sources", crash_sources(machine))
    built = build_user_load(prepared, initrd=initrd, cmdline=cmdline, crash=crash, machine=view, **kw)
    segments = [_zeros(s) for s in built.plan.segments]
    if identity_map:
        segments = null_segments_below_1mib(segments)
    plan = dataclasses.replace(built.plan, target="xen", machine=machine, segments=tuple(segments),
                               kexec_type="KEXEC_TYPE_CRASH" if crash else "KEXEC_TYPE_DEFAULT")
    violations = plan.validate()
    if violations:
        raise UserLoadRefused("Xen would refuse this load: " + "; ".join(str(v) for v in violations),
                              violations)
    return UserLoad(plan=plan, protocol=built.protocol)


def _zeros(seg):
    """A segment that must read as zero, with its zeros as bytes (Xen copies only what is given)."""
    if seg.null or seg.buffer is None or seg.bufsz or seg.role != "backup":
        return seg
    return dataclasses.replace(seg, buffer=bytes(seg.memsz), bufsz=seg.memsz)


# -- the EFI load types: the whole bzImage, no purgatory of ours ----------------------------------

#: where the command line sits in the boot-params segment: after the zero page
EFI_CMDLINE_OFFSET = 4096


def build_xen_efi_load(prepared, *, initrd, cmdline, crash: bool, machine, sys_root="/sys",
                       getrandom=os.getrandom, firmware=None, modules=(), dtb=None, **_ignored) -> UserLoad:
    """A load of Xen's EFI types (``KEXEC_TYPE_DEFAULT_EFI``/``CRASH_EFI``) for ``prepared``'s bzImage.

    The segments are the planner's (:func:`pykexec.plan.xen.plan_xen_efi`); this fills them:
    segment 0 is the file's own bytes (what Secure Boot verifies), boot-params holds the zero page
    (the bare machine's e820: the next kernel runs without Xen; for a crash load the crash area, the
    low 640 KiB and the firmware's ranges), then the command line, then an RNG seed as setup_data;
    a crash load's elfcorehdr describes the machine and Xen's per-CPU notes.  There is no backup
    of the low 640 KiB (no purgatory of ours runs to copy it), so the dump reads that memory as the
    capture kernel leaves it.  The options of the other builders that concern our purgatory
    (checks, verbosity) have no meaning here and are ignored; modules and a DTB are refused."""
    from ..boot import e820 as e820_mod, zeropage
    from ..boot.firmware import read_firmware
    from ..formats.bzimage import BzImage
    from ..plan.xen import plan_xen_efi
    from ..errors import NotLoadable, UsageError

    if modules or dtb is not None:
        raise UsageError("Xen's EFI load types take a bzImage, an initrd and a command line; "
                         "no --module and no --dtb")
    layer = prepared.kernel_layer
    if not isinstance(layer, BzImage):
        raise NotLoadable(layer.format, "is not a bzImage; Xen's EFI load types boot Linux bzImages only")
    if machine.memory_source in DOM0_VIEWS:
        raise LoadRefused(f"Xen's machine memory map is unknown here (only dom0's {machine.memory_source} "
                          "was read); load xen-privcmd and run as root in dom0")
    data = prepared.kernel
    plan = plan_xen_efi(layer, data, machine=machine, crash=crash, initrd=initrd, cmdline=cmdline)
    segs = {s.role: s for s in plan.segments if not s.null}
    params_seg = segs["boot-params"]
    fills = {"kernel": data}
    view = machine.with_changes(crashk_res=machine.xen_crash_area, crashk_low_res=None, kexec_crash_size=None)
    if crash:
        elf = segs["elfcorehdr"]
        header = elfcore.build(elfcore.crash_ranges(view), sources=crash_sources(machine))
        if len(header) > elf.memsz:
            raise LoadRefused(f"the ELF core header is {len(header)} bytes but {elf.memsz} were planned "
                              "(more CPUs or memory ranges than the machine description says)")
        fills["elfcorehdr"] = header
        e820 = e820_mod.crash_map(view, keep_out=[elf.range], backup=e820_mod.backup_source(view))
    else:
        e820 = e820_mod.from_machine(machine)
    table, extended = zeropage.e820_table(e820)
    if extended is not None:
        raise LoadRefused(f"{len(e820)} memory ranges do not fit the zero page's 128 e820 entries "
                          "(SETUP_E820_EXT is not built for Xen's EFI load types)")
    raw_cmdline = plan.cmdline.encode() + b"\0"
    rng_at = params_seg.mem + EFI_CMDLINE_OFFSET + -(-len(raw_cmdline) // 16) * 16
    ((_, rng),) = zeropage.chain([(rng_at, zeropage.rng_seed(getrandom))])
    initrd_seg = segs.get("initrd")
    zero_page = zeropage.BootParams(
        header=zeropage.setup_header(data), e820=table, cmd_line_ptr=params_seg.mem + EFI_CMDLINE_OFFSET,
        ramdisk_image=initrd_seg.mem if initrd_seg else 0, ramdisk_size=len(initrd) if initrd else 0,
        setup_data=rng_at, firmware=read_firmware(sys_root) if firmware is None else firmware,
        hardware_subarch=0).pack()   # the next kernel runs on the bare machine, not as a Xen guest
    params = bytearray(rng_at - params_seg.mem + len(rng))
    params[:len(zero_page)] = zero_page
    params[EFI_CMDLINE_OFFSET:EFI_CMDLINE_OFFSET + len(raw_cmdline)] = raw_cmdline
    params[rng_at - params_seg.mem:] = rng
    fills["boot-params"] = bytes(params)
    if initrd is not None:
        fills["initrd"] = initrd
    segments = []
    for s in plan.segments:
        fill = fills.get(s.role)
        if fill is not None:
            if len(fill) > s.memsz - s.offset:
                raise LoadRefused(f"{s.role} holds {len(fill)} bytes but was planned with {s.memsz - s.offset}")
            s = dataclasses.replace(s, buffer=fill, bufsz=len(fill))
        segments.append(s)
    plan = dataclasses.replace(plan, segments=tuple(segments))
    violations = plan.validate()
    if violations:
        raise UserLoadRefused("Xen would refuse this load: " + "; ".join(str(v) for v in violations),
                              violations)
    return UserLoad(plan=plan, protocol="linux")

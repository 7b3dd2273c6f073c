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

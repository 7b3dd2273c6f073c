"""Whether this is Xen's dom0, and what Xen says about the machine.

dom0 cannot see the machine from /proc/iomem: a PV dom0's memory map is
pseudo-physical, and Xen's crash area, per-CPU crash notes and vmcoreinfo
are Xen's own.  kexec-tools asks libxenctrl (``xc_get_machine_memory_map``,
``xc_kexec_get_range``); this asks the same hypercalls
(``XENMEM_machine_memory_map``, ``KEXEC_CMD_kexec_get_range``).

dom0 is told apart from other Xen guests by ``/sys/hypervisor/uuid``, which
reads as the null handle in dom0 (drivers/xen/sys-hypervisor.c prints the
domain handle, all zeros for domain 0).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import SyscallError
from ...machine.ranges import Range, TypedRange
from .hypercalls import (KEXEC_RANGE_MA_CPU, KEXEC_RANGE_MA_CRASH, KEXEC_RANGE_MA_VMCOREINFO,
                         KEXEC_RANGE_MA_XEN, KEXEC_TYPE_CRASH)

if TYPE_CHECKING:
    from .hypercalls import Hypercalls

NULL_UUID = "00000000-0000-0000-0000-000000000000"
#: e820 types (the ACPI specification's, as Xen's e820.h numbers them) as /proc/iomem names them
E820_NAMES = {1: "System RAM", 2: "Reserved", 3: "ACPI Tables", 4: "ACPI Non-volatile Storage",
              5: "Unusable memory", 7: "Persistent Memory"}
#: more CPUs than Xen supports (NR_CPUS is at most 4096 in Xen's Kconfig)
MAX_CPUS = 4096


def is_xen(sys: Path = Path("/sys")) -> bool:
    try:
        return (sys / "hypervisor" / "type").read_text().strip() == "xen"
    except OSError:
        return False


def is_dom0(sys: Path = Path("/sys")) -> bool | None:
    """True in dom0, False in another Xen guest, None when it cannot be told (or not under Xen)."""
    if not is_xen(sys):
        return None
    try:
        return (sys / "hypervisor" / "uuid").read_text().strip() == NULL_UUID
    except OSError:
        return None


@dataclass(frozen=True)
class XenView:
    """The machine as Xen describes it to dom0."""

    memory: tuple[TypedRange, ...]
    crash_area: Range | None
    xen_image: Range | None
    cpu_notes: tuple[Range, ...]
    vmcoreinfo: Range | None
    unreadable: tuple[tuple[str, str], ...] = ()


def read_view(calls: "Hypercalls") -> XenView:
    """Everything :class:`~pykexec.machine.model.Machine` needs from Xen; never raises for a
    range Xen does not give, records it."""
    unreadable: list[tuple[str, str]] = []

    def get(range_: int, nr: int, what: str) -> Range | None:
        try:
            start, size = calls.kexec_get_range(range_, nr)
        except SyscallError as e:
            unreadable.append((what, f"KEXEC_CMD_kexec_get_range: {e.errno_name}"))
            return None
        return Range(start, size) if size else None

    memory: tuple[TypedRange, ...] = ()
    try:
        memory = tuple(TypedRange(addr, size, E820_NAMES.get(kind, "Reserved"), 0)
                       for addr, size, kind in sorted(calls.machine_memory_map()) if size)
    except SyscallError as e:
        unreadable.append(("machine memory map", f"XENMEM_machine_memory_map: {e.errno_name}"))
    crash = get(KEXEC_RANGE_MA_CRASH, 0, "xen crash area")
    image = get(KEXEC_RANGE_MA_XEN, 0, "xen image")
    vmcoreinfo = get(KEXEC_RANGE_MA_VMCOREINFO, 0, "xen vmcoreinfo")
    notes: list[Range] = []
    for cpu in range(MAX_CPUS):
        try:
            start, size = calls.kexec_get_range(KEXEC_RANGE_MA_CPU, cpu)
        except SyscallError as e:
            if e.errno_value not in (errno.ERANGE, errno.EINVAL):
                unreadable.append((f"xen cpu {cpu} notes", f"KEXEC_CMD_kexec_get_range: {e.errno_name}"))
            break
        if size:
            notes.append(Range(start, size))
    return XenView(memory=memory, crash_area=crash, xen_image=image, cpu_notes=tuple(notes),
                   vmcoreinfo=vmcoreinfo, unreadable=tuple(unreadable))


#: an entry no crash area reaches: the probe's load is refused before Xen allocates anything
PROBE_ENTRY = (1 << 64) - 1


def xen_locked_down(calls: "Hypercalls") -> bool:
    """Whether Xen is in lockdown (XenServer's Xen: Secure Boot, or ``lockdown`` on its command line).

    Xen has no call that says so.  This asks for a ``KEXEC_TYPE_CRASH`` load of no segments with
    an entry past any crash area, which changes nothing: a Xen in lockdown refuses every classic
    type first, with EPERM (``kexec_load``, xenserver-next/xen 56cf11184e); any other Xen refuses
    the entry with EADDRNOTAVAIL (``kimage_crash_alloc``) before allocating the image.  Any other
    answer (not dom0, no privcmd) is left to the load itself to report."""
    try:
        calls.kexec_load(KEXEC_TYPE_CRASH, PROBE_ENTRY, [])
    except SyscallError as e:
        return e.errno_value == errno.EPERM
    return False

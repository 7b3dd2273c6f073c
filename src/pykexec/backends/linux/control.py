"""Status, unload and exec: the calls that act on what Linux already holds."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

from ...errors import LoadRefused, SyscallError
from .policy import PROC, advise, explain
from .signals import kernel_call
from .syscalls import (KEXEC_FILE_ON_CRASH, KEXEC_FILE_UNLOAD, KEXEC_ON_CRASH, LinuxSyscalls, Status, Syscalls,
                       read_lockdown, read_status)


class LinuxControl:
    """Linux's owner entry (:data:`pykexec.receivers.OWNERS`): what /sys/kernel says is loaded,
    and unload and exec through the kexec calls on ``syscalls`` (None: the real ones)."""

    def __init__(self, syscalls: Syscalls | None = None, sysfs: Path = Path("/sys")) -> None:
        self.sysfs = sysfs
        self._syscalls = syscalls

    @property
    def syscalls(self) -> Syscalls:
        """The calls, made real only when one is made (status reads sysfs alone)."""
        return self._syscalls or LinuxSyscalls()

    def status(self) -> Status:
        """sysfs's kexec_loaded and kexec_crash_*, with whether the next exec is a KHO handover."""
        from ...machine.snapshot import kho_state
        st = read_status(self.sysfs)
        active, _ = kho_state(sys=self.sysfs)
        handover = False if active is False or st.loaded is False else (None if None in (active, st.loaded)
                                                                        else True)
        return replace(st, kho_active=active, kho_handover=handover)

    def unload(self, *, crash: bool) -> str:
        return unload(self.syscalls, crash=crash, lockdown=read_lockdown(self.sysfs))

    def execute(self, *, sync: bool) -> None:
        execute(self.syscalls, loaded=read_status(self.sysfs).loaded, sync=sync)


def unload(sys: Syscalls, *, crash: bool, lockdown: str | None, proc: Path = PROC) -> str:
    """Unload with kexec_file_load's UNLOAD flag (allowed under lockdown), else kexec_load."""
    flags = KEXEC_FILE_UNLOAD | (KEXEC_FILE_ON_CRASH if crash else 0)
    done = f"the kernel call had completed: the {'crash ' if crash else ''}kernel is unloaded"
    try:
        with kernel_call(done):
            sys.kexec_file_load(-1, -1, None, flags)
        return "kexec_file_load"
    except SyscallError as e:
        if e.errno_value not in (errno.ENOSYS, errno.EINVAL) or lockdown not in (None, "none"):
            raise explain(e, lockdown=lockdown, proc=proc) from None
    try:
        with kernel_call(done):
            sys.kexec_load(0, [], KEXEC_ON_CRASH if crash else 0)
    except SyscallError as e:
        raise explain(e, lockdown=lockdown, proc=proc) from None
    return "kexec_load"


def execute(sys: Syscalls, *, loaded: bool | None, sync: bool = True) -> None:
    """Sync file systems, then reboot into the loaded kernel (kexec -e)."""
    if loaded is False:
        raise LoadRefused("no kernel is loaded; load one first with `pykexec load`")
    if sync:
        sys.sync()
    try:
        sys.reboot_kexec()
    except SyscallError as e:
        raise advise(e) from None

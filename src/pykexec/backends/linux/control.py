"""Unload and exec: the calls that act on what is already loaded."""

from __future__ import annotations

import errno
from pathlib import Path

from ...errors import LoadRefused, SyscallError
from .policy import PROC, advise, explain
from .signals import kernel_call
from .syscalls import KEXEC_FILE_ON_CRASH, KEXEC_FILE_UNLOAD, KEXEC_ON_CRASH, Syscalls


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

"""Unload, status and exec under Xen: the kexec hypercalls that act on what Xen holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import LoadRefused, SyscallError
from ..linux.signals import kernel_call
from .hypercalls import KEXEC_RANGE_MA_CRASH, KEXEC_TYPE_CRASH, KEXEC_TYPE_DEFAULT
from .policy import explain

if TYPE_CHECKING:
    from ..linux.syscalls import Status
    from .hypercalls import Hypercalls

CALL_UNLOAD = "KEXEC_CMD_kexec_unload"


def unload(calls: "Hypercalls", *, crash: bool) -> str:
    """``KEXEC_CMD_kexec_unload`` of the default or crash image; returns the call's name."""
    done = f"the hypercall had completed: Xen's {'crash ' if crash else ''}image is unloaded"
    try:
        with kernel_call(done):
            calls.kexec_unload(KEXEC_TYPE_CRASH if crash else KEXEC_TYPE_DEFAULT)
    except SyscallError as e:
        raise explain(e) from None
    return CALL_UNLOAD


def status(calls: "Hypercalls") -> "Status":
    """Xen's own state: ``kexec_status`` for both types, the crash area's size from ``kexec_get_range``."""
    from ..linux.syscalls import Status
    try:
        loaded = calls.kexec_status(KEXEC_TYPE_DEFAULT)
        crash = calls.kexec_status(KEXEC_TYPE_CRASH)
    except SyscallError as e:
        raise explain(e) from None
    try:
        size: int | None = calls.kexec_get_range(KEXEC_RANGE_MA_CRASH, 0)[1]
    except SyscallError:
        size = None
    return Status(loaded=loaded, crash_loaded=crash, crash_size=size)


def execute(calls: "Hypercalls", *, sync: bool = True, sync_fn=None) -> None:
    """Sync file systems, then ``KEXEC_CMD_kexec`` of the default image (Xen reboots the machine into it)."""
    try:
        loaded = calls.kexec_status(KEXEC_TYPE_DEFAULT)
    except SyscallError as e:
        raise explain(e) from None
    if not loaded:
        raise LoadRefused("Xen has no kernel loaded; load one first with `pykexec load`")
    if sync:
        import os
        (sync_fn or os.sync)()
    try:
        calls.kexec_exec(KEXEC_TYPE_DEFAULT)
    except SyscallError as e:
        raise explain(e) from None

"""Unload, status and exec under Xen: the kexec hypercalls that act on what Xen holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import LoadRefused, SyscallError
from ..linux.signals import kernel_call
from .hypercalls import KEXEC_RANGE_MA_CRASH, KEXEC_TYPE_CRASH, KEXEC_TYPE_DEFAULT
from .policy import explain

if TYPE_CHECKING:
    from ..linux.syscalls import Status
    from .hypercalls import Hypercalls

CALL_UNLOAD = "KEXEC_CMD_kexec_unload"


class XenControl:
    """Xen's owner entry (:data:`pykexec.receivers.OWNERS`): in dom0 the hypervisor holds the
    loaded images, so status, unload and exec are hypercalls (``calls``: a test's fake, else
    privcmd's); dom0's /sys says nothing of them."""

    def __init__(self, calls: Any = None, sysfs: Path = Path("/sys")) -> None:
        self._calls = calls

    @property
    def calls(self) -> "Hypercalls":
        from .backend import hypercalls_from
        return hypercalls_from(self._calls)

    def status(self) -> "Status":
        return status(self.calls)

    def unload(self, *, crash: bool) -> str:
        return unload(self.calls, crash=crash)

    def execute(self, *, sync: bool) -> None:
        execute(self.calls, sync=sync)


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

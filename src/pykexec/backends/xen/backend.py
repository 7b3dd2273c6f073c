"""``KEXEC_CMD_kexec_load``: Xen copies user space's segments and keeps them for exec or a crash.

The hand-off is the :class:`~pykexec.boot.usermode.UserLoad` that
:func:`pykexec.boot.xen.build_xen_load` made: every segment's bytes at machine
addresses, null segments (no buffer) where Xen must only map memory.  Xen
loads into a spare slot and swaps it in only when the load succeeded
(``kexec_swap_images``), so a refused load leaves the earlier image loaded.

Test hook: ``PYKEXEC_TEST_XEN_MOVE=ROLE:MADDR`` moves the segment planned as
ROLE to MADDR just before the hypercall, past the planner and the validator,
so that the VM tests can see what Xen itself refuses; ``PYKEXEC_TEST_XEN_NO_FILLER=1``
drops the null segments (the low-1 MiB identity-map filler), so that they can
show whether Xen still needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from ...errors import SyscallError, UsageError
from ..linux.signals import kernel_call
from .hypercalls import KEXEC_TYPE_CRASH, KEXEC_TYPE_DEFAULT, KEXEC_TYPE_NUMBERS, XenSegment
from .policy import explain_load, loaded_sentence

if TYPE_CHECKING:
    from ...boot.usermode import UserLoad
    from .hypercalls import Hypercalls

log = logging.getLogger(__name__)
TEST_MOVE = "PYKEXEC_TEST_XEN_MOVE"
TEST_NO_FILLER = "PYKEXEC_TEST_XEN_NO_FILLER"
EFI_TYPES = ("KEXEC_TYPE_DEFAULT_EFI", "KEXEC_TYPE_CRASH_EFI")


def hypercalls_from(calls: Any) -> "Hypercalls":
    """``calls`` when it is a :class:`Hypercalls` (a test's fake), else the real privcmd ones.

    :func:`pykexec.receivers.backend_for` hands every backend the object the
    caller passed as ``syscalls``; a Linux one means "the real thing"."""
    if calls is not None and hasattr(calls, "kexec_status"):
        return calls
    from .hypercalls import PrivcmdHypercalls
    return PrivcmdHypercalls()


class XenBackend:
    """Executes a :class:`UserLoad` with ``__HYPERVISOR_kexec_op(KEXEC_CMD_kexec_load)``."""

    call = "KEXEC_CMD_kexec_load"

    def __init__(self, calls: Any = None) -> None:
        self._calls = calls

    def execute(self, load: "UserLoad") -> int:
        """Load; the type is the plan's (the EFI types put the boot_params address in
        ``parameters``, where the others put the entry)."""
        kexec_type = KEXEC_TYPE_NUMBERS.get(load.plan.kexec_type or "",
                                            KEXEC_TYPE_CRASH if load.crash else KEXEC_TYPE_DEFAULT)
        efi = load.plan.kexec_type in EFI_TYPES
        entry = load.plan.entry_arg if efi else load.entry
        # a segment starting mid-page (the EFI types' segment 0) is described by its byte address
        segments = [XenSegment(None if s.null else s.view, s.mem + s.offset, s.memsz - s.offset)
                    for s in load.segments]
        segments = _test_move(segments, load, os.environ.get(TEST_MOVE))
        if os.environ.get(TEST_NO_FILLER) == "1":
            log.info("test hook %s: dropping %d null segments", TEST_NO_FILLER,
                     sum(s.buf is None for s in segments))
            segments = [s for s in segments if s.buf is not None]
        try:
            calls = hypercalls_from(self._calls)
            with kernel_call(loaded_sentence(load.crash)):
                calls.kexec_load(kexec_type, entry, segments)
        except SyscallError as e:
            raise explain_load(e, load.plan.kexec_type or "") from None
        return kexec_type


def _test_move(segments: list[XenSegment], load: "UserLoad", spec: str | None) -> list[XenSegment]:
    if not spec:
        return segments
    role, _, maddr = spec.partition(":")
    try:
        index = next(i for i, s in enumerate(load.segments) if s.role == role)
        dest = int(maddr, 0)
    except (StopIteration, ValueError):
        raise UsageError(f"{TEST_MOVE}={spec!r}: expected ROLE:MADDR with ROLE one of "
                         f"{', '.join(s.role for s in load.segments)}") from None
    log.info("test hook %s: moving %s from %#x to %#x", TEST_MOVE, role, segments[index].dest_maddr, dest)
    out = list(segments)
    out[index] = dataclasses.replace(out[index], dest_maddr=dest)
    return out

"""``kexec_load``: user space built every byte; the kernel copies the segments and jumps.

The hand-off is a :class:`~pykexec.boot.usermode.UserLoad`, whose plan's
segments carry their bytes; here they become ``struct kexec_segment``
entries, and ``crash`` becomes ``KEXEC_ON_CRASH``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .policy import loaded_sentence
from .signals import kernel_call
from .syscalls import KEXEC_ON_CRASH, Syscalls, UserSegment

if TYPE_CHECKING:
    from ...boot.usermode import UserLoad


class UserBackend:
    """Executes a :class:`UserLoad` with ``kexec_load``."""

    call = "kexec_load"

    def __init__(self, syscalls: Syscalls) -> None:
        self.syscalls = syscalls

    def execute(self, load: "UserLoad") -> int:
        flags = KEXEC_ON_CRASH if load.crash else 0
        segments = [UserSegment(s.view, s.mem, s.memsz) for s in load.segments]  # views, not copies
        with kernel_call(loaded_sentence(load.crash)):
            self.syscalls.kexec_load(load.entry, segments, flags)
        return flags

"""Backends: the only code that makes kexec system calls.

Everything above this package builds plans and byte buffers.  A backend
executes one hand-off and nothing else:

* :class:`pykexec.plan.loadplan.FileLoad` for ``kexec_file_load``: the files
  the kernel reads itself, with the planner's prediction;
* :class:`pykexec.boot.usermode.UserLoad` for ``kexec_load``: a plan whose
  segments carry every byte.

A dry run stops just before the backend, so what ``--dry-run`` prints is
exactly the hand-off a backend would have executed.  Each Linux
backend sits on the small :class:`~pykexec.backends.linux.syscalls.Syscalls`
protocol, so tests use a recording fake instead of the real calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class LoadReport:
    """What was done, for the CLI's text and JSON output."""

    syscall: str = ""
    flags: int = 0
    attempts: list[str] = field(default_factory=list)


class Backend(Protocol):
    """Executes one hand-off; raises :class:`~pykexec.errors.SyscallError` as the receiver answered."""

    call: str

    def execute(self, load: Any) -> int:
        """Hand ``load`` to the receiver; returns the flags it was given."""
        ...


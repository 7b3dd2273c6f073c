"""A planned load: where each segment goes, the entry point and the command line.

A :class:`LoadPlan` is what a loader would hand the receiver (``kexec_load``,
``kexec_file_load`` or Xen's ``KEXEC_CMD_kexec_load``).  It prints as a table,
serialises to JSON, and ``validate()`` runs the receiver's own checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..machine.model import Machine
from ..machine.ranges import human_size
from .kexec_buf import Segment

@dataclass(frozen=True)
class Violation:
    """One rule the receiver would enforce, broken: the errno it would return and why."""

    rule: str
    errno: str
    message: str
    segment: int | None = None
    role: str | None = None

    def __str__(self) -> str:
        where = "" if self.segment is None else f"segment {self.segment} ({self.role}): "
        return f"{self.errno}: {where}{self.message} [{self.rule}]"

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "errno": self.errno, "segment": self.segment, "role": self.role,
                "message": self.message}


@dataclass(frozen=True)
class LoadPlan:
    """Segments, entry and command line of one load, for one receiver (``target``).

    ``entry`` is what the receiver jumps to (the purgatory for Linux x86, the
    kernel for arm64 and Xen CRASH_EFI); ``entry_arg`` is the boot_params
    address where the receiver passes it (%rsi; Xen CRASH_EFI's
    ``parameters``).  ``kexec_type`` is the Xen load type where relevant;
    ``boot_params`` the component sizes of the x86 boot_params segment when
    the kernel builds it (:class:`pykexec.plan.x86.BootParamsSize`);
    ``device_tree`` the DTB an arm64 user-mode load hands on, with its edits
    (:class:`pykexec.boot.arm64.DeviceTree`).
    """

    target: str
    crash: bool
    entry: int
    cmdline: str | None
    segments: tuple[Segment, ...]
    arch: str
    machine: Machine = field(repr=False, compare=False)
    entry_arg: int | None = None
    kexec_type: str | None = None
    notes: tuple[str, ...] = ()
    boot_params: Any = field(default=None, repr=False, compare=False)
    device_tree: Any = field(default=None, repr=False, compare=False)

    def validate(self) -> tuple[Violation, ...]:
        """The receiver's checks on this plan: Linux's for linux-*, Xen's for xen*."""
        from .validate import validate_linux, validate_xen

        if self.target.startswith("xen"):
            return validate_xen(self)
        return validate_linux(self)

    def to_json(self, *, violations: tuple[Violation, ...] | None = None) -> dict[str, Any]:
        violations = self.validate() if violations is None else violations
        return {
            "target": self.target, "crash": self.crash, "entry": hex(self.entry),
            "entry_arg": None if self.entry_arg is None else hex(self.entry_arg),
            "kexec_type": self.kexec_type, "cmdline": self.cmdline,
            "segments": [{"role": s.role, "mem": hex(s.mem), "memsz": hex(s.memsz), "bufsz": hex(s.bufsz),
                          "sha256": s.sha256, **({"null": True} if s.null else {})}
                         for s in self.segments],
            "violations": [v.to_json() for v in violations],
            "notes": list(self.notes),
            **({"boot_params": {**dataclasses.asdict(self.boot_params), "total": self.boot_params.total}}
               if dataclasses.is_dataclass(self.boot_params) else {}),
            **({"device_tree": self.device_tree.to_json()} if self.device_tree is not None else {}),
        }

    def __str__(self) -> str:
        head = f"{self.target} {'crash ' if self.crash else ''}load for {self.arch}"
        if self.kexec_type:
            head += f" ({self.kexec_type})"
        lines = [head, f"  {'#':>2}  {'role':<16} {'mem':>18} {'last':>18} {'memsz':>10} {'bufsz':>10}"]
        for i, s in enumerate(self.segments):
            last = f"{s.mem + s.memsz - 1:#018x}" if s.memsz else "-"
            lines.append(f"  {i:>2}  {s.role:<16} {s.mem:#018x} {last:>18} {human_size(s.memsz):>10} "
                         f"{human_size(s.bufsz):>10}")
        what = "device tree" if self.device_tree is not None else "boot parameters"
        lines.append(f"  entry {self.entry:#x}" + ("" if self.entry_arg is None
                                                   else f", {what} at {self.entry_arg:#x}"))
        lines.append(f"  command line: {self.cmdline!r}" if self.cmdline is not None else "  command line: none")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


@dataclass(frozen=True)
class FileLoad:
    """The ``kexec_file_load`` hand-off: the files the kernel reads, and the planner's prediction.

    ``kernel_fd``/``initrd_fd`` are the user's own files where the kernel can
    take them as they are (so IMA appraisal sees the real file); otherwise
    ``kernel``/``initrd`` are what pykexec prepared, for a memfd.  ``plan``
    is where the planner predicts the kernel will put each segment (None
    where no planner knows this image on this machine).
    """

    kernel: Any = field(repr=False)
    kernel_fd: int | None
    initrd: Any = field(repr=False)
    initrd_fd: int | None
    initrd_size: int
    cmdline: str | None
    crash: bool = False
    debug: bool = False
    plan: LoadPlan | None = None

    @property
    def kernel_source(self) -> str:
        return "original file" if self.kernel_fd is not None else "memfd (prepared)"


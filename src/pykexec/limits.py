"""Bounds on the work untrusted input can cause.

Decompression output is capped by the size the container declares and by a
global limit (default 512 MiB, ``--max-output`` or ``PYKEXEC_MAX_OUTPUT``); nesting
is capped so that an image that contains itself cannot loop.

The global limit is what a standalone compressed file (a vmlinux.gz, an
initramfs) gets, since nothing declares its size; decoders produce their
output in bounded chunks (:mod:`.formats.compression`), so a bomb is refused
once it passes the limit, having cost at most that much memory.  512 MiB is
several times the largest vmlinux a distribution ships (a 6.1 x86_64 vmlinux is
about 60 MiB); ``--max-output`` raises it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from .errors import UsageError

DEFAULT_MAX_OUTPUT = 512 << 20
DEFAULT_MAX_DEPTH = 8


def byte_count(text: str, what: str) -> int:
    """A positive byte count written in decimal or 0x hex, or a UsageError naming ``what``."""
    try:
        value = int(text, 0)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{what}: {text!r} is not a positive number of bytes")
    return value


def _env_max_output() -> int:
    value = os.environ.get("PYKEXEC_MAX_OUTPUT")
    return byte_count(value, "PYKEXEC_MAX_OUTPUT") if value else DEFAULT_MAX_OUTPUT


@dataclass(frozen=True)
class Limits:
    """How much output a decompressor may produce and how deep images may nest."""

    max_output: int = DEFAULT_MAX_OUTPUT
    max_depth: int = DEFAULT_MAX_DEPTH
    why: str = "the global output limit"
    declared: bool = False
    progress: Callable[[str, int, int | None], None] | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls, *, progress: Callable[[str, int, int | None], None] | None = None) -> "Limits":
        return cls(max_output=_env_max_output(), progress=progress)

    def capped(self, declared: int | None, by: str) -> "Limits":
        """These limits, tightened to a size an outer header declares."""
        if declared is None or declared >= self.max_output:
            return self
        return replace(self, max_output=max(declared, 0), why=f"the size declared by {by}",
                       declared=True)


class TerminalProgress:
    """Progress of long steps on a terminal, throttled; silent when not on one."""

    def __init__(self, stream=sys.stderr, interval: float = 0.2,
                 unit: tuple[str, int] = ("MiB", 1 << 20)) -> None:
        self.stream, self.interval, self.last = stream, interval, 0.0
        self.unit, self.scale = unit

    def __call__(self, what: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if now - self.last < self.interval and not finished:
            return
        self.last = now
        of = f" of {total // self.scale} {self.unit} ({100 * done // max(total, 1)}%)" \
            if total and not finished else ""
        end = "\n" if finished else ""
        self.stream.write(f"\r{what}: {done // self.scale} {self.unit}{of}\x1b[K{end}")
        self.stream.flush()


def terminal_progress(stream=sys.stderr, unit: tuple[str, int] = ("MiB", 1 << 20)
                      ) -> TerminalProgress | None:
    """A progress reporter (counting ``unit``: a name and its size) when ``stream`` is a
    terminal, else None."""
    return TerminalProgress(stream, unit=unit) if stream.isatty() else None

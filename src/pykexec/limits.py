"""Bounds on the work untrusted input can cause.

Decompression output is capped by the size the container declares and by a
global limit (default 2 GiB, ``--max-output`` or ``PYKEXEC_MAX_OUTPUT``); nesting
is capped so that an image that contains itself cannot loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

DEFAULT_MAX_OUTPUT = 2 << 30
DEFAULT_MAX_DEPTH = 8


def _env_max_output() -> int:
    value = os.environ.get("PYKEXEC_MAX_OUTPUT")
    return int(value, 0) if value else DEFAULT_MAX_OUTPUT


@dataclass(frozen=True)
class Limits:
    """How much output a decompressor may produce and how deep images may nest."""

    max_output: int = DEFAULT_MAX_OUTPUT
    max_depth: int = DEFAULT_MAX_DEPTH
    why: str = "the global output limit"

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(max_output=_env_max_output())

    def capped(self, declared: int | None, by: str) -> "Limits":
        """These limits, tightened to a size an outer header declares."""
        if declared is None or declared >= self.max_output:
            return self
        return replace(self, max_output=max(declared, 0), why=f"the size declared by {by}")

"""Physical memory as immutable half-open ranges.

``Range(start, size)`` covers ``[start, start + size)``; ``end`` is one past
the last byte and ``last`` is the last byte, as the kernel's ``struct
resource`` keeps it (``res->end`` is inclusive).  A :class:`TypedRange` adds
the type string exactly as ``/proc/iomem`` or ``/sys/firmware/memmap`` print
it ("System RAM", "Reserved", "Crash kernel", ...) and its nesting depth in
the iomem tree.  After u-root ``pkg/boot/kexec/memory_linux.go``.

Alignment helpers use the kernel's mask arithmetic (``ALIGN``/``ALIGN_DOWN``
in include/linux/align.h), which is only meaningful for powers of two.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Sequence

PAGE_SIZE = 4096
U64_MAX = (1 << 64) - 1
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def align_up(value: int, alignment: int) -> int:
    """``ALIGN(x, a)``: round up to a multiple of the power of two ``a``."""
    if alignment <= 1:
        return value
    return (value + alignment - 1) & ~(alignment - 1)


def align_down(value: int, alignment: int) -> int:
    """``ALIGN_DOWN(x, a)``: round down to a multiple of the power of two ``a``."""
    if alignment <= 1:
        return value
    return value & ~(alignment - 1)


def human_size(size: int) -> str:
    """A size the way a person says it: "31 MiB", "4 KiB", "1.5 GiB", "123 bytes"."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit:
            value = size / unit
            return f"{value:.0f} {name}" if value == int(value) else f"{value:.1f} {name}"
    return f"{size} bytes"


@dataclass(frozen=True, order=True)
class Range:
    """The half-open physical range ``[start, start + size)``."""

    start: int
    size: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.size < 0:
            raise ValueError(f"a range needs start >= 0 and size >= 0, got {self.start:#x}+{self.size:#x}")

    @classmethod
    def span(cls, start: int, end: int) -> "Range":
        """The range ``[start, end)``."""
        return cls(start, max(end - start, 0))

    @classmethod
    def inclusive(cls, start: int, last: int) -> "Range":
        """The range ``[start, last]``, as ``struct resource`` and iomem write it."""
        return cls(start, max(last - start + 1, 0))

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def last(self) -> int:
        return self.start + self.size - 1

    def __bool__(self) -> bool:
        return self.size > 0

    def __contains__(self, item: "int | Range") -> bool:
        if isinstance(item, Range):
            return self.start <= item.start and item.end <= self.end and item.size > 0
        return self.start <= item < self.end

    def overlaps(self, other: "Range") -> bool:
        return self.start < other.end and other.start < self.end and self.size > 0 and other.size > 0

    def intersect(self, other: "Range") -> "Range | None":
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Range(start, end - start) if start < end else None

    def minus(self, other: "Range") -> tuple["Range", ...]:
        """What is left of this range once ``other`` is taken out: 0, 1 or 2 ranges."""
        if not self.overlaps(other):
            return (self,) if self.size else ()
        parts = []
        if self.start < other.start:
            parts.append(Range.span(self.start, other.start))
        if other.end < self.end:
            parts.append(Range.span(other.end, self.end))
        return tuple(parts)

    def align(self, alignment: int) -> "Range | None":
        """The largest sub-range whose start and end are multiples of ``alignment``."""
        start, end = align_up(self.start, alignment), align_down(self.end, alignment)
        return Range.span(start, end) if start < end else None

    def __str__(self) -> str:
        return f"[{self.start:#x}-{self.last:#x}]" if self.size else f"[{self.start:#x}, empty]"


@dataclass(frozen=True, order=True)
class TypedRange(Range):
    """A range with its type as the kernel prints it, and its depth in the iomem tree."""

    type: str = "System RAM"
    depth: int = 0

    @property
    def range(self) -> Range:
        return Range(self.start, self.size)

    @property
    def is_system_ram(self) -> bool:
        """"System RAM" and the driver-managed "System RAM (kmem)"-style names."""
        return self.type == "System RAM" or self.type.startswith("System RAM (")

    @property
    def driver_managed(self) -> bool:
        """IORESOURCE_SYSRAM_DRIVER_MANAGED: add_memory_driver_managed() insists on the
        name "System RAM ($DRIVER)" (mm/memory_hotplug.c), so the name tells."""
        return self.type.startswith("System RAM (") and self.type.endswith(")")


def _merged_bounds(ranges: Iterable[Range]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted((r.start, r.start + r.size) for r in ranges if r.size):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint, coalesced ranges covering the same addresses."""
    return [Range(a, b - a) for a, b in _merged_bounds(ranges)]


def subtract(ranges: Sequence[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` minus ``holes``; both are merged first.  O((n + m) log(n + m))."""
    base = _merged_bounds(ranges)
    cut = _merged_bounds(holes)
    starts = [h[0] for h in cut]
    out: list[Range] = []
    for r_start, r_end in base:
        i = max(bisect.bisect_right(starts, r_start) - 1, 0)
        cursor = r_start
        while i < len(cut) and cut[i][0] < r_end:
            h_start, h_end = cut[i]
            if h_end > cursor:
                if h_start > cursor:
                    out.append(Range(cursor, h_start - cursor))
                cursor = max(cursor, h_end)
            i += 1
        if cursor < r_end:
            out.append(Range(cursor, r_end - cursor))
    return out


def total(ranges: Iterable[Range]) -> int:
    return sum(r.size for r in merge(ranges))

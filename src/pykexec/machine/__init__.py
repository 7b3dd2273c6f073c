"""The machine model: memory ranges, crash region, KHO scratch and kexec state of a host.

* :mod:`.ranges` -- immutable half-open ``Range``/``TypedRange`` and set operations.
* :mod:`.iomem`, :mod:`.fdt` -- parsers for /proc/iomem text and DTBs.
* :mod:`.snapshot` -- read the running host (roots injectable), unprivileged.
* :mod:`.description` -- load/save the JSON description or an iomem dump.
* :class:`.model.Machine` -- the data the planners use.
"""

from __future__ import annotations

from .description import from_iomem, from_json, load, loads, to_json
from .model import Machine, crash_from_iomem, normalize_arch
from .ranges import PAGE_SIZE, Range, TypedRange, align_down, align_up, human_size, merge, subtract
from .snapshot import snapshot
from .text import format_machine

__all__ = ["Machine", "Range", "TypedRange", "PAGE_SIZE", "align_up", "align_down", "human_size",
           "merge", "subtract", "snapshot", "load", "loads", "from_iomem", "from_json", "to_json",
           "crash_from_iomem", "normalize_arch", "format_machine"]

"""The machine model: memory ranges, crash region, KHO scratch and kexec state of a host.

* :mod:`.ranges` -- immutable half-open ``Range``/``TypedRange`` and set operations.
* :mod:`.iomem`, :mod:`.fdt` -- parsers for /proc/iomem text and DTBs.
* :mod:`.snapshot` -- read the running host (roots injectable), unprivileged.
* :mod:`.description` -- load/save the JSON description or an iomem dump.
* :class:`.model.Machine` -- the data the planners use.
"""

from __future__ import annotations

import importlib

from .model import Machine, crash_from_iomem, normalize_arch
from .ranges import PAGE_SIZE, Range, TypedRange, align_down, align_up, human_size, merge, subtract
from .snapshot import snapshot

# Exported names and their modules, imported on first use: a load on this host
# reads no description file and prints no machine.
_EXPORTS = {"from_iomem": "description", "from_json": "description", "load": "description",
            "loads": "description", "to_json": "description", "format_machine": "text"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Machine", "Range", "TypedRange", "PAGE_SIZE", "align_up", "align_down", "human_size",
           "merge", "subtract", "snapshot", "load", "loads", "from_iomem", "from_json", "to_json",
           "crash_from_iomem", "normalize_arch", "format_machine"]

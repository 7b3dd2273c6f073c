"""``/proc/iomem``: the kernel's resource tree, as text.

kernel/resource.c ``r_show`` prints one resource a line::

    %*s%0*llx-%0*llx : %s        (two spaces of indent per depth, inclusive end)

Readers without CAP_SYS_ADMIN see every address as zero: ``r_show`` prints
0 for both ends unless the opener passed ``capable(CAP_SYS_ADMIN)`` (Linux
4.15, "/proc/iomem: only expose physical resource addresses to privileged
users").  :func:`parse` keeps the tree and reports
whether the addresses were hidden, so the caller can fall back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import MachineDescriptionError
from .ranges import TypedRange

LINE = re.compile(r"^(?P<indent> *)(?P<start>[0-9a-fA-F]+)-(?P<last>[0-9a-fA-F]+) : (?P<name>.*)$")


@dataclass(frozen=True)
class Iomem:
    """The parsed tree, flattened in file order (parents before children)."""

    resources: tuple[TypedRange, ...]
    addresses_hidden: bool


def looks_like_iomem(text: str) -> bool:
    """Does the first non-blank line look like an iomem line?  Used to auto-detect dumps."""
    for line in text.splitlines():
        if line.strip():
            return bool(LINE.match(line.rstrip("\n")))
    return False


def parse(text: str, *, source: str = "/proc/iomem") -> Iomem:
    """Parse iomem text; a malformed line raises naming the line number."""
    out: list[TypedRange] = []
    parents: list[TypedRange] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line:
            continue
        m = LINE.match(line)
        if not m:
            raise MachineDescriptionError(source, f"expected 'START-END : NAME' with hex addresses, "
                                          f"found {line.strip()[:60]!r}", line=number)
        indent = len(m["indent"])
        if indent % 2:
            raise MachineDescriptionError(source, f"indent of {indent} spaces is not a multiple of 2",
                                          line=number)
        depth = indent // 2
        if depth > len(parents):
            raise MachineDescriptionError(source, f"nested {depth} levels deep under a parent at depth "
                                          f"{len(parents) - 1}", line=number)
        start, last = int(m["start"], 16), int(m["last"], 16)
        if last < start:
            raise MachineDescriptionError(source, f"end {last:#x} is below start {start:#x}", line=number)
        del parents[depth:]
        node = TypedRange(start, last - start + 1, m["name"], depth)
        if parents and not _inside(node, parents[-1]):
            raise MachineDescriptionError(source, f"{node} {node.type!r} lies outside its parent "
                                          f"{parents[-1]} {parents[-1].type!r}", line=number)
        parents.append(node)
        out.append(node)
    hidden = len(out) > 1 and all(r.start == 0 and r.size == 1 for r in out)
    return Iomem(tuple(out), hidden)


def _inside(child: TypedRange, parent: TypedRange) -> bool:
    # Zeroed (unprivileged) dumps nest 0-0 inside 0-0, which is fine.
    return parent.start <= child.start and child.last <= parent.last


def format_iomem(resources: tuple[TypedRange, ...]) -> str:
    """The inverse of :func:`parse`: iomem text, 8-digit addresses at least."""
    return "".join(f"{'  ' * r.depth}{r.start:08x}-{r.last:08x} : {r.type}\n" for r in resources)

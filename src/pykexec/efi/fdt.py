"""Read ``/chosen`` out of a flattened device tree (Devicetree Specification v0.4, chapter 5).

pylibfdt is used when it is installed; otherwise a small reader walks the
structure block itself: FDT_BEGIN_NODE (1), FDT_END_NODE (2), FDT_PROP (3),
FDT_NOP (4), FDT_END (9), all big-endian and 4-byte aligned.
"""

from __future__ import annotations

import struct

FDT_MAGIC = 0xD00DFEED
BEGIN_NODE, END_NODE, PROP, NOP, END = 1, 2, 3, 4, 9
STRING_PROPS = ("bootargs",)


def _value(name: str, raw: bytes) -> int | str | bytes:
    if name in STRING_PROPS:
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if len(raw) == 4:
        return struct.unpack(">I", raw)[0]
    if len(raw) == 8:
        return struct.unpack(">Q", raw)[0]
    return raw


def chosen(dtb: bytes) -> dict | None:
    """The properties of ``/chosen``: strings for bootargs, integers for 1- and 2-cell values."""
    try:
        import libfdt
    except ImportError:
        return chosen_small(dtb)
    f = libfdt.Fdt(dtb)
    off = f.path_offset("/chosen", [libfdt.NOTFOUND])
    if off < 0:
        return None
    out = {}
    prop = f.first_property_offset(off, [libfdt.NOTFOUND])
    while prop >= 0:
        p = f.get_property_by_offset(prop)
        out[p.name] = _value(p.name, bytes(p))
        prop = f.next_property_offset(prop, [libfdt.NOTFOUND])
    return out


def chosen_small(dtb: bytes) -> dict | None:
    """The same as :func:`chosen`, without pylibfdt."""
    magic, total, off_struct, off_strings = struct.unpack_from(">IIII", dtb, 0)
    if magic != FDT_MAGIC or total > len(dtb):
        raise ValueError("not a flattened device tree")
    pos, path, found = off_struct, [], None
    while pos + 4 <= total:
        token = struct.unpack_from(">I", dtb, pos)[0]
        pos += 4
        if token == BEGIN_NODE:
            end = dtb.index(b"\0", pos)
            path.append(dtb[pos:end].decode("ascii", "replace"))
            pos = (end + 4) & ~3
            if path == ["", "chosen"]:
                found = {}
        elif token == END_NODE:
            if path == ["", "chosen"]:
                return found
            path.pop()
        elif token == PROP:
            length, nameoff = struct.unpack_from(">II", dtb, pos)
            pos += 8
            if found is not None and path == ["", "chosen"]:
                name_end = dtb.index(b"\0", off_strings + nameoff)
                name = dtb[off_strings + nameoff:name_end].decode("ascii", "replace")
                found[name] = _value(name, dtb[pos:pos + length])
            pos = (pos + length + 3) & ~3
        elif token == NOP:
            continue
        elif token == END:
            break
        else:
            raise ValueError(f"bad FDT token {token:#x} at {pos - 4:#x}")
    return found

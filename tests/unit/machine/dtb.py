"""A minimal flattened-devicetree writer for tests (Devicetree Specification v0.4, chapter 5)."""

from __future__ import annotations

import struct


def _cells(values: list[int], cells: int) -> bytes:
    out = b""
    for v in values:
        out += v.to_bytes(4 * cells, "big")
    return out


def reg(pairs: list[tuple[int, int]], address_cells: int = 2, size_cells: int = 2) -> bytes:
    return b"".join(_cells([a], address_cells) + _cells([s], size_cells) for a, s in pairs)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def dtb(nodes: dict[str, dict[str, bytes]], memreserve: list[tuple[int, int]] = ()) -> bytes:
    """``nodes`` maps paths ("/", "/memory@40000000", ...) to properties; parents must be listed first."""
    strings = bytearray()
    names: dict[str, int] = {}

    def name_off(name: str) -> int:
        if name not in names:
            names[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return names[name]

    struct_block = bytearray()

    def emit(path: str) -> None:
        name = "" if path == "/" else path.rsplit("/", 1)[1]
        struct_block.extend(u32(1) + name.encode() + b"\0")
        struct_block.extend(bytes(-len(struct_block) % 4))
        for key, value in nodes[path].items():
            struct_block.extend(u32(3) + u32(len(value)) + u32(name_off(key)) + value)
            struct_block.extend(bytes(-len(struct_block) % 4))
        prefix = "/" if path == "/" else path + "/"
        for child in nodes:
            if child != path and child.startswith(prefix) and "/" not in child[len(prefix):]:
                emit(child)
        struct_block.extend(u32(2))

    emit("/")
    struct_block.extend(u32(9))
    rsv = b"".join(struct.pack(">QQ", a, s) for a, s in memreserve) + bytes(16)
    off_rsv = 40
    off_struct = off_rsv + len(rsv)
    off_strings = off_struct + len(struct_block)
    total = off_strings + len(strings)
    header = struct.pack(">10I", 0xD00DFEED, total, off_struct, off_strings, off_rsv, 17, 16, 0,
                         len(strings), len(struct_block))
    return header + rsv + bytes(struct_block) + bytes(strings)


def arm64_virt(memreserve=((0x48000000, 0x1000),)) -> bytes:
    """A QEMU-virt-like tree: 2 GiB at 1 GiB, one /reserved-memory region, one /memreserve/."""
    return dtb({
        "/": {"#address-cells": u32(2), "#size-cells": u32(2), "compatible": b"linux,dummy-virt\0"},
        "/memory@40000000": {"device_type": b"memory\0", "reg": reg([(0x40000000, 0x80000000)])},
        "/reserved-memory": {"#address-cells": u32(2), "#size-cells": u32(2), "ranges": b""},
        "/reserved-memory/linux,cma": {"reg": reg([(0x70000000, 0x4000000)]), "reusable": b""},
        "/reserved-memory/off@0": {"reg": reg([(0x50000000, 0x1000)]), "status": b"disabled\0"},
        "/chosen": {"bootargs": b"console=ttyAMA0\0"},
    }, list(memreserve))

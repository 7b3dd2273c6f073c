"""Builders for the emulator's unit tests: minimal PE32+ images around a few bytes of code."""

from __future__ import annotations

import struct

import pytest

TEXT_RVA = 0x1000


def pe_image(code: bytes, *, machine: int = 0x8664, image_base: int = 0x140000000,
             subsystem: int = 10, relocs: list[int] = ()) -> bytes:
    """A PE32+ with one .text section at RVA 0x1000 holding ``code`` (entry at its start).

    ``relocs``: RVAs of DIR64 fixups, put in a .reloc section.
    """
    text = code.ljust(-(-len(code) // 0x200) * 0x200 or 0x200, b"\0")
    sections = [(b".text", TEXT_RVA, len(code) or 1, text, 0x60000020)]
    reloc_rva = reloc_size = 0
    if relocs:
        page = relocs[0] & ~0xFFF
        entries = b"".join(struct.pack("<H", (10 << 12) | (r - page)) for r in relocs)
        if len(entries) % 4:
            entries += b"\0\0"
        block = struct.pack("<II", page, 8 + len(entries)) + entries
        reloc_rva = TEXT_RVA + -(-len(text) // 0x1000) * 0x1000
        reloc_size = len(block)
        sections.append((b".reloc", reloc_rva, len(block), block.ljust(0x200, b"\0"), 0x42000040))
    size_of_image = sections[-1][1] + -(-len(sections[-1][3]) // 0x1000) * 0x1000
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", machine, len(sections), 0, 0, 0, 240, 0x22)
    dirs = [(0, 0)] * 16
    dirs[5] = (reloc_rva, reloc_size)
    opt = struct.pack("<HBBIIIII", 0x20B, 2, 0, len(text), 0, 0, TEXT_RVA, TEXT_RVA)
    opt += struct.pack("<QIIHHHHHHIIIIHHQQQQII", image_base, 0x1000, 0x200, 0, 0, 0, 0, 0, 0, 0,
                       size_of_image, 0x200, 0, subsystem, 0, 0x100000, 0x1000, 0x100000,
                       0x1000, 0, 16)
    opt += b"".join(struct.pack("<II", *d) for d in dirs)
    table = b""
    raw = 0x200
    body = b""
    for name, rva, vsize, data, chars in sections:
        table += struct.pack("<8sIIIIIIHHI", name, vsize, rva, len(data), raw + len(body),
                             0, 0, 0, 0, chars)
        body += data
    head = bytes(dos) + coff + opt + table
    return head.ljust(0x200, b"\0") + body


@pytest.fixture
def pe():
    return pe_image

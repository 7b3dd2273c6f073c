"""Independent oracles: what the tests know about real images without pykexec.

Everything here reads bytes at the offsets the specifications give (Linux
x86 boot protocol, arm64 booting.rst, the EFI zboot header, ELF, Multiboot 1
and 2), or uses other tools (pefile, gzip).
"""

from __future__ import annotations

import struct

# magic at the start of a compressed x86 payload -> algorithm name used by the contract
PAYLOAD_MAGICS = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
    (b"\x5d\x00\x00", "lzma"),
]

COMPRESSION_FORMATS = {"gzip", "zstd", "xz", "lzma", "lz4", "lzo", "bzip2"}

PT_NAMES = {
    "PT_NULL": 0, "PT_LOAD": 1, "PT_DYNAMIC": 2, "PT_INTERP": 3, "PT_NOTE": 4, "PT_SHLIB": 5,
    "PT_PHDR": 6, "PT_TLS": 7, "PT_GNU_EH_FRAME": 0x6474E550, "PT_GNU_STACK": 0x6474E551,
    "PT_GNU_RELRO": 0x6474E552, "PT_GNU_PROPERTY": 0x6474E553,
}


def u8(b: bytes, off: int) -> int:
    return b[off]


def u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0]


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def u64(b: bytes, off: int) -> int:
    return struct.unpack_from("<Q", b, off)[0]


# --------------------------------------------------------------------------
# x86 boot protocol (Documentation/arch/x86/boot.rst)


def bzimage_header(b: bytes) -> dict:
    assert b[0x202:0x206] == b"HdrS", "not a bzImage (no HdrS at 0x202)"
    proto = u16(b, 0x206)
    out = {
        "setup_sects": u8(b, 0x1F1),
        "protocol": proto,
        "loadflags": u8(b, 0x211),
        "header_end": 0x202 + u8(b, 0x201),
    }
    if proto >= 0x205:
        out["kernel_alignment"] = u32(b, 0x230)
        out["relocatable_kernel"] = u8(b, 0x234)
    if proto >= 0x206:
        out["cmdline_size"] = u32(b, 0x238)
    if proto >= 0x20C:
        out["xloadflags"] = u16(b, 0x236)
    if proto >= 0x208:
        out["payload_offset"] = u32(b, 0x248)
        out["payload_length"] = u32(b, 0x24C)
    if proto >= 0x20A:
        out["pref_address"] = u64(b, 0x258)
        out["init_size"] = u32(b, 0x260)
    return out


def version_strings(proto: int) -> set:
    """The acceptable spellings of a boot protocol version ("2.15"; "2.07" or "2.7")."""
    major, minor = proto >> 8, proto & 0xFF
    return {f"{major}.{minor:02d}", f"{major}.{minor}"}


def setup_size(b: bytes) -> int:
    sects = u8(b, 0x1F1) or 4
    return (sects + 1) * 512


def payload(b: bytes) -> bytes:
    h = bzimage_header(b)
    start = setup_size(b) + h["payload_offset"]
    return b[start:start + h["payload_length"]]


def payload_algorithm(b: bytes) -> str:
    p = payload(b)
    for magic, name in PAYLOAD_MAGICS:
        if p.startswith(magic):
            return name
    raise AssertionError(f"unknown payload magic {p[:8].hex()}")


# --------------------------------------------------------------------------
# PE / Authenticode, with pefile


def pe_facts(path) -> dict:
    """{"pe_header": bool, "authenticode": bool} by pefile and the WIN_CERTIFICATE bytes."""
    import pefile

    data = open(path, "rb").read()
    if data[:2] != b"MZ":
        return {"pe_header": False, "authenticode": False}
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError:
        return {"pe_header": False, "authenticode": False}
    sec = pe.OPTIONAL_HEADER.DATA_DIRECTORY[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]]
    signed = False
    if sec.Size and sec.VirtualAddress + 8 <= len(data):
        length, revision, ctype = struct.unpack_from("<IHH", data, sec.VirtualAddress)
        signed = ctype == 0x0002 and 8 < length <= sec.Size and revision in (0x0100, 0x0200)
    return {"pe_header": True, "authenticode": signed}


def pe_section_names(path) -> list:
    import pefile

    pe = pefile.PE(path, fast_load=True)
    return [s.Name.rstrip(b"\0").decode() for s in pe.sections]


def pe_section(path, name: str) -> bytes:
    import pefile

    pe = pefile.PE(path, fast_load=True)
    for s in pe.sections:
        if s.Name.rstrip(b"\0").decode() == name:
            return s.get_data()[: s.Misc_VirtualSize]
    raise KeyError(name)


# --------------------------------------------------------------------------
# arm64 Image header (Documentation/arch/arm64/booting.rst) and EFI zboot


def arm64_header(b: bytes) -> dict:
    assert b[0x38:0x3C] == b"ARM\x64", "no ARM\\x64 magic at 0x38"
    return {"text_offset": u64(b, 8), "image_size": u64(b, 16), "flags": u64(b, 24)}


def zboot_header(b: bytes) -> dict:
    assert b[:2] == b"MZ" and b[4:8] == b"zimg", "not an EFI zboot image"
    return {
        "payload_offset": u32(b, 8),
        "payload_size": u32(b, 12),
        "compression": b[24:56].split(b"\0", 1)[0].decode(),
    }


# --------------------------------------------------------------------------
# ELF


def elf_facts(b: bytes) -> dict:
    assert b[:4] == b"\x7fELF"
    cls = {1: 32, 2: 64}[b[4]]
    assert b[5] == 1, "big-endian ELF"
    e_machine = u16(b, 18)
    if cls == 64:
        entry, phoff = u64(b, 24), u64(b, 32)
        phentsize, phnum = u16(b, 54), u16(b, 56)
        fmt = "<IIQQQQQQ"
    else:
        entry, phoff = u32(b, 24), u32(b, 28)
        phentsize, phnum = u16(b, 42), u16(b, 44)
        fmt = "<IIIIIIII"
    segs = []
    for i in range(phnum):
        f = struct.unpack_from(fmt, b, phoff + i * phentsize)
        if cls == 64:
            p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = f
        else:
            p_type, off, vaddr, paddr, filesz, memsz, _flags, _align = f
        segs.append({"p_type": p_type, "p_offset": off, "p_vaddr": vaddr, "p_paddr": paddr,
                     "p_filesz": filesz, "p_memsz": memsz})
    return {"class": cls, "e_machine": e_machine, "entry": entry, "segments": segs}


def p_type_value(v) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        if v in PT_NAMES:
            return PT_NAMES[v]
        if "PT_" + v.upper() in PT_NAMES:
            return PT_NAMES["PT_" + v.upper()]
        return int(v, 0)
    raise AssertionError(f"p_type {v!r}")


MACHINE_NAMES = {62: ("X86_64", "AMD64", "X86-64"), 3: ("386", "I386", "X86"), 183: ("AARCH64", "ARM64")}


def machine_matches(value, e_machine: int) -> bool:
    if isinstance(value, int):
        return value == e_machine
    up = str(value).upper()
    names = MACHINE_NAMES.get(e_machine, ())
    return any(up == n or up == "EM_" + n or up.endswith("_" + n) for n in names)


# --------------------------------------------------------------------------
# Multiboot


def multiboot_headers(b: bytes) -> dict:
    """{1: offset, 2: offset} of valid Multiboot 1/2 headers, per the specifications."""
    found = {}
    for off in range(0, min(len(b), 8192) - 11, 4):
        if u32(b, off) == 0x1BADB002:
            if (u32(b, off) + u32(b, off + 4) + u32(b, off + 8)) & 0xFFFFFFFF == 0:
                found[1] = off
                break
    for off in range(0, min(len(b), 32768) - 15, 8):
        if u32(b, off) == 0xE85250D6:
            s = sum(struct.unpack_from("<IIII", b, off)) & 0xFFFFFFFF
            if s == 0:
                found[2] = off
                break
    return found


def multiboot_entries(entries) -> dict:
    """Normalise the elf layer's "multiboot" list to {version: offset or None}."""
    out = {}
    for e in entries or []:
        version = None
        offset = None
        if isinstance(e, str):
            name = e.lower()
        elif isinstance(e, dict):
            if "version" in e:
                version = int(e["version"])
            name = str(e.get("format") or e.get("type") or e.get("name") or e.get("kind") or "").lower()
            offset = e.get("offset")
            if offset is None and isinstance(e.get("header"), dict):
                offset = e["header"].get("offset")
        else:
            continue
        if version is None:
            if name in ("multiboot2", "mb2"):
                version = 2
            elif name in ("multiboot", "multiboot1", "mb1"):
                version = 1
        if version is not None:
            out[version] = offset
    return out


# --------------------------------------------------------------------------
# a minimal flattened device tree (a real, valid FDT blob)


def minimal_fdt(compatible: str = "pykexec,real-test") -> bytes:
    strings = b"compatible\0"
    val = compatible.encode() + b"\0"
    val_p = val + b"\0" * (-len(val) % 4)
    struct_blk = (
        struct.pack(">I", 1) + b"\0\0\0\0"                      # FDT_BEGIN_NODE ""
        + struct.pack(">III", 3, len(val), 0) + val_p           # FDT_PROP compatible
        + struct.pack(">I", 2)                                  # FDT_END_NODE
        + struct.pack(">I", 9)                                  # FDT_END
    )
    off_rsv = 40
    off_struct = off_rsv + 16
    off_strings = off_struct + len(struct_blk)
    total = off_strings + len(strings)
    total += -total % 8
    hdr = struct.pack(">10I", 0xD00DFEED, total, off_struct, off_strings, off_rsv, 17, 16, 0,
                      len(strings), len(struct_blk))
    blob = hdr + b"\0" * 16 + struct_blk + strings
    return blob + b"\0" * (total - len(blob))

"""Synthetic boot images for the tests: minimal, structurally faithful, built in memory.

Every builder is a pure function returning ``bytes``.  Header fields can be
overridden by keyword so a test can corrupt exactly one of them.  The layouts
follow the specifications the parsers implement:

* bzImage: Documentation/arch/x86/boot.rst (setup header at 0x1f1),
* arm64 Image: Documentation/arch/arm64/booting.rst,
* RISC-V Image: Documentation/arch/riscv/boot-image-header.rst,
* LoongArch Image: arch/loongarch/include/asm/image.h,
* zboot: drivers/firmware/efi/libstub/zboot-header.S,
* PE/COFF: the Microsoft PE and COFF specification (PE32+),
* UKI and add-ons: UAPI.5, as systemd's ukify lays them out,
* ELF: the System V ABI,
* Multiboot 0.6.96 section 3.1 and Multiboot2 2.0 section 3.1,
* compressed payloads as the kernel build writes them (scripts/Makefile.lib):
  ``gzip -n -9``; the other codecs ``_with_size`` (le32 decompressed size
  appended); lz4 is the *legacy* frame (``lz4 -l``); lzo is lzop's container.

Nothing here imports pykexec: the builders are an independent statement of
the formats.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass

import lz4.block
import lzo
import zstandard

# --------------------------------------------------------------------------- helpers


def align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def pad_to(data: bytes, size: int) -> bytes:
    if len(data) > size:
        raise ValueError(f"{len(data)} bytes do not fit in {size}")
    return data + bytes(size - len(data))


def put(buf: bytearray, offset: int, code: str, value) -> None:
    """Write one little-endian field, growing the buffer if needed."""
    size = struct.calcsize("<" + code)
    if offset + size > len(buf):
        buf.extend(bytes(offset + size - len(buf)))
    struct.pack_into("<" + code, buf, offset, value)


def le32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


# --------------------------------------------------------------------------- compression

#: the kernel's codecs, by the name the parser reports
ALGORITHMS = ("gzip", "zstd", "xz", "lzma", "lz4", "lzo", "bzip2")

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
LZOP_BLOCK = 256 << 10
F_ADLER32_D, F_ADLER32_C, F_H_FILTER = 0x1, 0x2, 0x800
F_OS_UNIX = 0x03000000
M_LZO1X_1 = 1


def lz4_legacy(data: bytes, *, block: int = LZ4_LEGACY_BLOCK) -> bytes:
    """lz4's legacy frame (``lz4 -l``): magic, then le32 size + raw LZ4 block, ≤ 8 MiB each."""
    out = bytearray(le32(LZ4_LEGACY_MAGIC))
    for at in range(0, len(data), block):
        c = lz4.block.compress(data[at:at + block], store_size=False)
        out += le32(len(c)) + c
    return bytes(out)


def lzop_header(*, version: int = 0x1030, lib_version: int = 0x20A0,
                version_needed: int = 0x0940, method: int = M_LZO1X_1, level: int = 1,
                flags: int = F_ADLER32_D | F_OS_UNIX, mode: int = 0o100644,
                mtime_low: int = 0, mtime_high: int = 0, name: bytes = b"",
                filter_: int | None = None, checksum: int | None = None) -> bytes:
    """lzop's file header (lzop src/lzop.c: write_header), magic included."""
    h = bytearray(struct.pack(">HH", version, lib_version))
    if version >= 0x0940:
        h += struct.pack(">H", version_needed)
    h += struct.pack(">B", method)
    if version >= 0x0940:
        h += struct.pack(">B", level)
    h += struct.pack(">I", flags)
    if flags & F_H_FILTER:
        h += struct.pack(">I", filter_ or 0)
    h += struct.pack(">II", mode, mtime_low)
    if version >= 0x0940:
        h += struct.pack(">I", mtime_high)
    h += struct.pack(">B", len(name)) + name
    h += struct.pack(">I", zlib.adler32(bytes(h)) if checksum is None else checksum)
    return LZOP_MAGIC + bytes(h)


def lzop(data: bytes, *, block: int = LZOP_BLOCK, flags: int = F_ADLER32_D | F_OS_UNIX,
         **header) -> bytes:
    """lzop's container: header, then blocks of be32 dst_len, be32 src_len, checksums, data."""
    out = bytearray(lzop_header(flags=flags, **header))
    for at in range(0, len(data), block):
        chunk = data[at:at + block]
        c = lzo.compress(chunk, 1, False)
        stored = len(c) >= len(chunk)
        body = chunk if stored else c
        out += struct.pack(">II", len(chunk), len(body))
        if flags & F_ADLER32_D:
            out += struct.pack(">I", zlib.adler32(chunk))
        if not stored and flags & F_ADLER32_C:
            out += struct.pack(">I", zlib.adler32(c))
        out += body
    out += struct.pack(">I", 0)
    return bytes(out)


def compress(algorithm: str, data: bytes) -> bytes:
    """One stream of ``algorithm``, as the kernel build's compressor writes it."""
    if algorithm == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if algorithm == "zstd":
        return zstandard.ZstdCompressor(level=19).compress(data)
    if algorithm == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}])
    if algorithm == "lzma":
        out = lzma.compress(data, format=lzma.FORMAT_ALONE)
        assert out[:3] == b"\x5d\x00\x00", out[:13].hex()
        return out
    if algorithm == "lz4":
        return lz4_legacy(data)
    if algorithm == "lzo":
        return lzop(data)
    if algorithm == "bzip2":
        return bz2.compress(data, 9)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def compress_with_size(algorithm: str, data: bytes) -> bytes:
    """The payload the kernel embeds: gzip alone (ISIZE is the size), else ``_with_size``."""
    out = compress(algorithm, data)
    return out if algorithm == "gzip" else out + le32(len(data))


# ---- decompression bombs: large outputs built without compressing gigabytes

def gzip_bomb(size: int) -> bytes:
    """gzip of ``size`` zero bytes (a multiple of 1 MiB), by repeating one full-flushed deflate run."""
    mib = 1 << 20
    assert size % mib == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    crc = 0
    zero = bytes(mib)
    for _ in range(size // mib):
        crc = zlib.crc32(zero, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    return header + piece * (size // mib) + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


def zstd_bomb(size: int) -> bytes:
    mib = 1 << 20
    c = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    zero = bytes(mib)
    out = [c.compress(zero) for _ in range(size // mib)]
    return b"".join(out) + c.flush()


def lz4_bomb(size: int) -> bytes:
    block = lz4.block.compress(bytes(LZ4_LEGACY_BLOCK), store_size=False)
    return le32(LZ4_LEGACY_MAGIC) + (le32(len(block)) + block) * (size // LZ4_LEGACY_BLOCK)


def lzo_bomb(size: int, *, block: int = 8 << 20) -> bytes:
    zero = bytes(block)
    c = lzo.compress(zero, 1, False)
    one = struct.pack(">III", block, len(c), zlib.adler32(zero)) + c
    return lzop_header() + one * (size // block) + struct.pack(">I", 0)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def xz_bomb(size: int, *, block: int = 64 << 20) -> bytes:
    """An xz stream of ``size`` zero bytes: one compressed block repeated, with a matching index."""
    one = lzma.compress(bytes(block), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                        preset=0)
    backward_size = (struct.unpack_from("<I", one, len(one) - 8)[0] + 1) * 4
    index_at = len(one) - 12 - backward_size
    blk = one[12:index_at]
    assert one[index_at] == 0
    count, pos = _read_varint(one, index_at + 1)
    assert count == 1
    unpadded, pos = _read_varint(one, pos)
    n = size // block
    index = bytearray(b"\x00" + _varint(n) + (_varint(unpadded) + _varint(block)) * n)
    index += bytes(-len(index) % 4)
    index += le32(zlib.crc32(index))
    flags = one[6:8]
    footer_body = le32(len(index) // 4 - 1) + flags
    footer = le32(zlib.crc32(footer_body)) + footer_body + b"YZ"
    return one[:12] + blk * n + bytes(index) + footer


def lzma_bomb(size: int) -> bytes:
    """Legacy .lzma of ``size`` zeros (streaming: LZMA1 cannot be spliced)."""
    c = lzma.LZMACompressor(format=lzma.FORMAT_ALONE, filters=[{
        "id": lzma.FILTER_LZMA1, "dict_size": 1 << 20, "mode": lzma.MODE_FAST,
        "nice_len": 273, "mf": lzma.MF_HC3, "depth": 1}])
    zero = bytes(1 << 20)
    return b"".join(c.compress(zero) for _ in range(size >> 20)) + c.flush()


def _bits(data: bytes) -> str:
    return "".join(f"{b:08b}" for b in data)


def _from_bits(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def bzip2_bomb(blocks: int) -> bytes:
    """bzip2 of ``blocks`` × 40 MiB of zeros: one block's bits repeated (blocks are bit-aligned)."""
    per_block = 40 << 20  # one 900k block after bzip2's initial run-length step
    one = bz2.compress(bytes(per_block), 9)
    bits = _bits(one)
    eos = f"{0x177245385090:048b}"
    end = bits.rindex(eos)
    block_bits = bits[32:end]
    block_crc = int(block_bits[48:80], 2)
    combined = 0
    for _ in range(blocks):
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ block_crc
    out = _bits(b"BZh9") + block_bits * blocks + eos + f"{combined:032b}"
    return _from_bits(out)


# --------------------------------------------------------------------------- ELF

EM_386, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 62, 183, 243
PT_LOAD, PT_NOTE = 1, 4


@dataclass
class Phdr:
    p_type: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int
    p_align: int


def elf(elf_class: int = 64, *, endian: str = "little", machine: int | None = None,
        e_type: int = 2, entry: int | None = None, vaddr: int = 0x1000000,
        load: bytes = b"\x90" * 48 + b"\xf4", bss: int = 0x100,
        notes: tuple[tuple[bytes, int, bytes], ...] = ((b"Linux", 6, b"6.1.0-pykexec\0"),),
        extra_phdrs: tuple[Phdr, ...] = (), section_headers: tuple[tuple, ...] = (),
        tail: bytes = b"", **fields) -> bytes:
    """A tiny ELF executable: a PT_LOAD holding ``load`` and a PT_NOTE holding ``notes``.

    ``fields`` override ELF header fields by their gABI names (``e_phoff``,
    ``e_phnum``, ``ei_class``, ...).  ``section_headers`` are raw tuples
    (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
    sh_addralign, sh_entsize) appended after the data.
    """
    e = "<" if endian == "little" else ">"
    is64 = elf_class == 64
    if machine is None:
        machine = EM_X86_64 if is64 else EM_386
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    note_bytes = b"".join(_note(e, *n) for n in notes)
    phnum = (1 if load is not None else 0) + (1 if notes else 0) + len(extra_phdrs)
    pos = ehsize + phnum * phentsize
    note_at = align(pos, 4)
    load_at = align(note_at + len(note_bytes), 16)
    phdrs: list[Phdr] = []
    if load is not None:
        phdrs.append(Phdr(PT_LOAD, load_at, vaddr, vaddr, len(load), len(load) + bss, 5, 16))
    if notes:
        phdrs.append(Phdr(PT_NOTE, note_at, 0, 0, len(note_bytes), len(note_bytes), 4, 4))
    phdrs.extend(extra_phdrs)
    body = bytearray(load_at + len(load or b""))
    body[note_at:note_at + len(note_bytes)] = note_bytes
    if load is not None:
        body[load_at:load_at + len(load)] = load
    body += tail
    shoff = 0
    if section_headers:
        shoff = align(len(body), 8)
        body += bytes(shoff - len(body))
        for sh in section_headers:
            body += (struct.pack(e + "IIQQQQIIQQ", *sh) if is64 else struct.pack(e + "10I", *sh))
    h = {
        "ei_class": 2 if is64 else 1, "ei_data": 1 if endian == "little" else 2,
        "ei_version": 1, "e_type": e_type, "e_machine": machine, "e_version": 1,
        "e_entry": vaddr if entry is None else entry, "e_phoff": ehsize, "e_shoff": shoff,
        "e_flags": 0, "e_ehsize": ehsize, "e_phentsize": phentsize, "e_phnum": len(phdrs),
        "e_shentsize": shentsize if section_headers else 0, "e_shnum": len(section_headers),
        "e_shstrndx": 0,
    }
    unknown = set(fields) - set(h)
    if unknown:
        raise TypeError(f"unknown ELF header fields {sorted(unknown)}")
    h.update(fields)
    ident = (b"\x7fELF" + bytes([h["ei_class"], h["ei_data"], h["ei_version"]])).ljust(16, b"\0")
    if is64:
        ehdr = ident + struct.pack(e + "HHIQQQIHHHHHH", h["e_type"], h["e_machine"], h["e_version"],
                                   h["e_entry"], h["e_phoff"], h["e_shoff"], h["e_flags"],
                                   h["e_ehsize"], h["e_phentsize"], h["e_phnum"],
                                   h["e_shentsize"], h["e_shnum"], h["e_shstrndx"])
    else:
        ehdr = ident + struct.pack(e + "HHIIIIIHHHHHH", h["e_type"], h["e_machine"], h["e_version"],
                                   h["e_entry"], h["e_phoff"], h["e_shoff"], h["e_flags"],
                                   h["e_ehsize"], h["e_phentsize"], h["e_phnum"],
                                   h["e_shentsize"], h["e_shnum"], h["e_shstrndx"])
    body[:ehsize] = ehdr
    for i, p in enumerate(phdrs):
        at = ehsize + i * phentsize
        if is64:
            raw = struct.pack(e + "IIQQQQQQ", p.p_type, p.p_flags, p.p_offset, p.p_vaddr,
                              p.p_paddr, p.p_filesz, p.p_memsz, p.p_align)
        else:
            raw = struct.pack(e + "8I", p.p_type, p.p_offset, p.p_vaddr, p.p_paddr,
                              p.p_filesz, p.p_memsz, p.p_flags, p.p_align)
        body[at:at + phentsize] = raw
    return bytes(body)


def _note(e: str, name: bytes, n_type: int, desc: bytes) -> bytes:
    name0 = name + b"\0"
    return (struct.pack(e + "III", len(name0), len(desc), n_type)
            + name0 + bytes(-len(name0) % 4) + desc + bytes(-len(desc) % 4))


def elf64(**kw) -> bytes:
    return elf(64, **kw)


def elf32(**kw) -> bytes:
    return elf(32, **kw)


# --------------------------------------------------------------------------- Multiboot

MB1_MAGIC = 0x1BADB002
MB2_MAGIC = 0xE85250D6


def multiboot_header(flags: int = 0x00010003, *, at: int = 0, load_addr: int = 0x100000,
                     image_size: int = 0x1000, magic: int = MB1_MAGIC,
                     checksum: int | None = None, **fields) -> bytes:
    """Multiboot 1 header: magic, flags, checksum; address fields (bit 16); video fields (bit 2)."""
    out = bytearray(struct.pack("<III", magic, flags,
                                (-(magic + flags)) & 0xFFFFFFFF if checksum is None else checksum))
    if flags & (1 << 16) or flags & (1 << 2):
        addr = {"header_addr": load_addr + at, "load_addr": load_addr,
                "load_end_addr": load_addr + image_size, "bss_end_addr": load_addr + image_size + 0x1000,
                "entry_addr": load_addr + at + 48}
        addr.update({k: v for k, v in fields.items() if k in addr})
        out += struct.pack("<5I", *addr.values())
    if flags & (1 << 2):
        video = {"mode_type": 0, "width": 1024, "height": 768, "depth": 32}
        video.update({k: v for k, v in fields.items() if k in video})
        out += struct.pack("<4I", *video.values())
    return bytes(out)


def multiboot_image(flags: int = 0x00010003, *, header_offset: int = 0,
                    body: bytes = b"\xfa\xf4" * 64, size: int | None = None, **fields) -> bytes:
    """A flat Multiboot 1 kernel: the header 4-byte aligned in the first 8 KiB, then code."""
    image_size = size or align(header_offset + 48 + len(body), 16)
    hdr = multiboot_header(flags, at=header_offset, image_size=image_size, **fields)
    out = bytearray(image_size if size is None else max(size, header_offset + len(hdr)))
    out[header_offset:header_offset + len(hdr)] = hdr
    start = header_offset + 48
    if start + len(body) <= len(out):
        out[start:start + len(body)] = body
    return bytes(out)


MB2_TAG_END, MB2_TAG_INFO, MB2_TAG_ADDRESS, MB2_TAG_ENTRY = 0, 1, 2, 3


def mb2_tag(ttype: int, values: tuple[int, ...] = (), *, flags: int = 0,
            size: int | None = None) -> bytes:
    raw = struct.pack("<HHI", ttype, flags, 8 + 4 * len(values) if size is None else size)
    raw += struct.pack(f"<{len(values)}I", *values)
    return raw + bytes(-len(raw) % 8)


def multiboot2_header(tags: tuple[bytes, ...] | None = None, *, arch: int = 0,
                      load_addr: int = 0x100000, image_size: int = 0x1000, at: int = 0,
                      magic: int = MB2_MAGIC, header_length: int | None = None,
                      checksum: int | None = None, end_tag: bool = True) -> bytes:
    if tags is None:
        tags = (mb2_tag(MB2_TAG_INFO, (6,)),
                mb2_tag(MB2_TAG_ADDRESS, (load_addr + at, load_addr, load_addr + image_size,
                                          load_addr + image_size + 0x1000)),
                mb2_tag(MB2_TAG_ENTRY, (load_addr + at + 0x80,)))
    body = b"".join(tags) + (mb2_tag(MB2_TAG_END) if end_tag else b"")
    length = 16 + len(body) if header_length is None else header_length
    csum = (-(magic + arch + length)) & 0xFFFFFFFF if checksum is None else checksum
    return struct.pack("<4I", magic, arch, length, csum) + body


def multiboot2_image(tags: tuple[bytes, ...] | None = None, *, header_offset: int = 0,
                     body: bytes = b"\xfa\xf4" * 64, **kw) -> bytes:
    """A flat Multiboot2 kernel: the header 8-byte aligned in the first 32 KiB, then code."""
    hdr = multiboot2_header(tags, at=header_offset, **kw)
    start = align(header_offset + len(hdr), 16)
    out = bytearray(start + len(body))
    out[header_offset:header_offset + len(hdr)] = hdr
    out[start:] = body
    return bytes(out)


def xen_like_elf(elf_class: int = 32) -> bytes:
    """An ELF whose first PT_LOAD starts with a Multiboot2 and a Multiboot header, like Xen."""
    mb2 = multiboot2_header()
    mb1 = multiboot_header(0x00000003)
    load = mb2 + bytes(-len(mb2) % 8) + mb1 + b"\x90" * 64
    return elf(elf_class, load=load, notes=((b"Xen", 5, b"xen-3.0\0"),))


# --------------------------------------------------------------------------- PE/COFF

IMAGE_FILE_MACHINE_AMD64, IMAGE_FILE_MACHINE_ARM64 = 0x8664, 0xAA64
IMAGE_FILE_MACHINE_RISCV64, IMAGE_FILE_MACHINE_LOONGARCH64 = 0x5064, 0x6264
IMAGE_SUBSYSTEM_EFI_APPLICATION = 10
SCN_CODE, SCN_DATA, SCN_READ, SCN_EXEC, SCN_WRITE = 0x20, 0x40, 0x40000000, 0x20000000, 0x80000000
PE_OPT_SIZE = 240  # PE32+ optional header with 16 data directories


@dataclass
class SectionHeader:
    name: bytes
    virtual_size: int
    virtual_address: int
    size_of_raw_data: int
    pointer_to_raw_data: int
    characteristics: int = SCN_DATA | SCN_READ

    def pack(self) -> bytes:
        return struct.pack("<8sIIIIIIHHI", self.name, self.virtual_size, self.virtual_address,
                           self.size_of_raw_data, self.pointer_to_raw_data, 0, 0, 0, 0,
                           self.characteristics)


def pe_headers(sections: list[SectionHeader], *, machine: int = IMAGE_FILE_MACHINE_AMD64,
               subsystem: int = IMAGE_SUBSYSTEM_EFI_APPLICATION, entry: int = 0,
               size_of_image: int = 0, size_of_headers: int = 0x200,
               file_alignment: int = 0x200, section_alignment: int = 0x1000,
               certificate_table: tuple[int, int] = (0, 0), number_of_sections: int | None = None,
               size_of_optional_header: int = PE_OPT_SIZE, characteristics: int = 0x0206,
               image_base: int = 0) -> bytes:
    """'PE\\0\\0', the COFF header, a PE32+ optional header and the section table."""
    coff = struct.pack("<HHIIIHH", machine,
                       len(sections) if number_of_sections is None else number_of_sections,
                       0, 0, 0, size_of_optional_header, characteristics)
    code = sum(s.size_of_raw_data for s in sections if s.characteristics & SCN_CODE)
    init = sum(s.size_of_raw_data for s in sections if not s.characteristics & SCN_CODE)
    base_of_code = next((s.virtual_address for s in sections if s.characteristics & SCN_CODE), 0)
    opt = struct.pack("<HBBIIIII", 0x20B, 2, 40, code, init, 0, entry, base_of_code)
    opt += struct.pack("<QIIHHHHHHIIIIHHQQQQII", image_base, section_alignment, file_alignment,
                       0, 0, 0, 0, 0, 0, 0, size_of_image, size_of_headers, 0, subsystem, 0,
                       0, 0, 0, 0, 0, 16)
    dirs = [(0, 0)] * 16
    dirs[4] = certificate_table
    opt += b"".join(struct.pack("<II", *d) for d in dirs)
    assert len(opt) == PE_OPT_SIZE
    return b"PE\0\0" + coff + opt + b"".join(s.pack() for s in sections)


def win_certificate(blob: bytes = b"\x30\x82" + b"\xa5" * 62) -> bytes:
    """A WIN_CERTIFICATE (revision 2.0, PKCS#7) wrapping ``blob``, padded to 8 bytes."""
    body = struct.pack("<IHH", 8 + len(blob), 0x0200, 0x0002) + blob
    return body + bytes(-len(body) % 8)


def pe(sections: list = (), *, machine: int = IMAGE_FILE_MACHINE_AMD64,
       subsystem: int = IMAGE_SUBSYSTEM_EFI_APPLICATION, signed: bool = False,
       dos: bytes | None = None, e_lfanew: int = 0x40, file_alignment: int = 0x200,
       section_alignment: int = 0x1000, trailing: bytes = b"", **header) -> bytes:
    """A PE32+ image.

    ``sections`` are ``(name, data)``, ``(name, data, virtual_size)`` or
    ``(name, data, virtual_size, characteristics)``.  Raw data is padded to
    FileAlignment; VirtualSize is the data's length unless given (as ukify
    writes UKIs).  ``dos`` is the start of the file (the MZ header, or a
    kernel's image header, at least 0x40 bytes); e_lfanew at 0x3c is set to
    where the PE header goes.  ``signed`` appends a certificate table after
    the sections and points DataDirectory[SECURITY] at it; ``trailing`` goes
    after everything (e.g. zero padding).
    """
    head = bytearray(dos if dos is not None else b"MZ" + bytes(0x3E))
    if len(head) < 0x40:
        head += bytes(0x40 - len(head))
    head[:2] = b"MZ"
    put(head, 0x3C, "I", e_lfanew)
    if len(head) < e_lfanew:
        head += bytes(e_lfanew - len(head))
    norm = []
    for s in sections:
        name, data = s[0], bytes(s[1])
        vsize = s[2] if len(s) > 2 and s[2] is not None else len(data)
        chars = s[3] if len(s) > 3 else (SCN_CODE | SCN_READ | SCN_EXEC if name == ".text"
                                         else SCN_DATA | SCN_READ)
        norm.append((name.encode() if isinstance(name, str) else name, data, vsize, chars))
    headers_end = e_lfanew + 24 + PE_OPT_SIZE + 40 * len(norm)
    size_of_headers = align(max(headers_end, len(head)), file_alignment)
    pos, va = size_of_headers, align(size_of_headers, section_alignment)
    table, blobs = [], []
    for name, data, vsize, chars in norm:
        raw = align(len(data), file_alignment)
        table.append(SectionHeader(name, vsize, va, raw, pos if raw else 0, chars))
        blobs.append((pos, data.ljust(raw, b"\0")))
        pos += raw
        va = align(va + max(vsize, raw, 1), section_alignment)
    cert = b""
    cert_at = 0
    if signed:
        cert_at = align(pos, 8)
        cert = win_certificate()
    entry = next((t.virtual_address for t in table if t.characteristics & SCN_CODE), 0)
    hdr = pe_headers(table, machine=machine, subsystem=subsystem, entry=entry,
                     size_of_image=va & 0xFFFFFFFF, size_of_headers=size_of_headers,
                     file_alignment=file_alignment, section_alignment=section_alignment,
                     certificate_table=(cert_at, len(cert)), **header)
    out = bytearray(size_of_headers)
    out[:len(head)] = head
    out[e_lfanew:e_lfanew + len(hdr)] = hdr
    for at, blob in blobs:
        out[at:at + len(blob)] = blob
    if signed:
        out += bytes(cert_at - len(out)) + cert
    return bytes(out + trailing)


def stub_sections() -> list:
    """What systemd-stub itself brings before ukify's sections."""
    return [(".text", b"\x55\x48\x89\xe5" + b"\xcc" * 60), (".sbat", b"sbat,1,SBAT Version\n")]


UKI_ORDER = (".osrel", ".cmdline", ".dtb", ".uname", ".initrd", ".ucode", ".linux")


def _as_bytes(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def uki(linux: bytes | None = None, *, cmdline: str | bytes | None = "console=ttyS0 quiet",
        initrd: bytes | None = None, ucode: bytes | None = None, dtb: bytes | None = None,
        osrel: str | None = 'ID=pykexec\nVERSION_ID="1"\n', uname: str | None = "6.1.0-pykexec",
        profiles: list[dict] = (), machine: int = IMAGE_FILE_MACHINE_AMD64,
        signed: bool = False, extra: list = (), **kw) -> bytes:
    """A UKI laid out as ukify does: stub sections, the base sections, then each profile.

    A profile is a dict: ``"profile"`` (the .profile text, default ``ID=pN``)
    and any of ``cmdline``, ``initrd``, ``ucode``, ``dtb``, ``linux``, ``osrel``,
    ``uname``; it may also give ``"sections"`` as extra raw ``(name, data)``.
    """
    if linux is None:
        linux = arm64_image() if machine == IMAGE_FILE_MACHINE_ARM64 else bzimage()
    base = {".osrel": osrel, ".cmdline": cmdline, ".dtb": dtb, ".uname": uname,
            ".initrd": initrd, ".ucode": ucode, ".linux": linux}
    sections = stub_sections()
    sections += [(n, _as_bytes(base[n])) for n in UKI_ORDER if base[n] is not None]
    sections += list(extra)
    for i, p in enumerate(profiles):
        sections.append((".profile", _as_bytes(p.get("profile", f"ID=p{i}\nTITLE=Profile {i}\n"))))
        for n in UKI_ORDER:
            if p.get(n[1:]) is not None:
                sections.append((n, _as_bytes(p[n[1:]])))
        sections += list(p.get("sections", ()))
    return pe(sections, machine=machine, signed=signed, **kw)


def addon(*, cmdline: str | bytes | None = "addon=1", initrd: bytes | None = None,
          ucode: bytes | None = None, dtb: bytes | None = None,
          machine: int = IMAGE_FILE_MACHINE_AMD64, signed: bool = False, **kw) -> bytes:
    """A UKI add-on: the stub's sections, then .cmdline/.dtb/.ucode/.initrd, no .linux."""
    sections = stub_sections()
    for name, value in ((".cmdline", cmdline), (".dtb", dtb), (".ucode", ucode),
                        (".initrd", initrd)):
        if value is not None:
            sections.append((name, _as_bytes(value)))
    return pe(sections, machine=machine, signed=signed, **kw)


# --------------------------------------------------------------------------- arm64 / riscv / LoongArch

ARM64_MAGIC = 0x644D5241
RISCV_MAGIC = b"RISCV\0\0\0"
RISCV_MAGIC2 = 0x05435352
LINUX_PE_MAGIC = 0x818223CD


def _kernel_pe_body(machine: int, code: bytes, data: bytes, header: bytes, signed: bool,
                    trailing: bytes) -> bytes:
    return pe([(".text", code), (".data", data)], machine=machine, dos=header, signed=signed,
              trailing=trailing, section_alignment=0x1000, file_alignment=0x200)


def arm64_image(*, text_offset: int = 0, image_size: int | None = None, flags: int = 0x0A,
                pe: bool = True, signed: bool = False, magic: int = ARM64_MAGIC,
                code: bytes = b"\x1f\x20\x03\xd5" * 32, data: bytes = b"arm64-data" * 8,
                trailing: bytes = b"", **fields) -> bytes:
    """An arm64 Image (booting.rst): the 64-byte header, optionally a PE image around it.

    ``flags`` default 0xa: little endian, 4K pages, placement anywhere.
    """
    h = bytearray(64)
    if pe:
        put(h, 0, "I", 0x91005A4D)       # "MZ" + add x13, x18, #0x16 (as head.S)
    else:
        put(h, 0, "I", 0x14000010)       # b stext
    put(h, 8, "Q", text_offset)
    put(h, 0x18, "Q", flags)
    put(h, 0x38, "I", magic)
    if pe:
        out = bytearray(_kernel_pe_body(IMAGE_FILE_MACHINE_ARM64, code, data, bytes(h), signed,
                                        trailing))
    else:
        out = h + code + data + trailing
    put(out, 0x10, "Q", align(len(out), 4096) if image_size is None else image_size)
    for name, value in fields.items():
        code_, off = {"code0": ("I", 0), "code1": ("I", 4), "res2": ("Q", 0x20),
                      "res3": ("Q", 0x28), "res4": ("Q", 0x30), "res5": ("I", 0x3C)}[name]
        put(out, off, code_, value)
    return bytes(out)


def riscv_image(*, text_offset: int = 0x200000, image_size: int | None = None, flags: int = 0,
                version: int = 0x2, pe: bool = True, magic: bytes = RISCV_MAGIC,
                magic2: int = RISCV_MAGIC2, code: bytes = b"\x13\x00\x00\x00" * 32,
                data: bytes = b"riscv-data" * 8, signed: bool = False, **fields) -> bytes:
    """A RISC-V Image (boot-image-header.rst), version 0.2, optionally a PE image."""
    h = bytearray(64)
    put(h, 0, "I", 0x5A4D if pe else 0)  # "MZ" is c.li s4,-13
    put(h, 4, "I", 0x0000006F)           # j kernel
    put(h, 8, "Q", text_offset)
    put(h, 0x18, "Q", flags)
    put(h, 0x20, "I", version)
    h[0x30:0x38] = magic
    put(h, 0x38, "I", magic2)
    if pe:
        out = bytearray(_kernel_pe_body(IMAGE_FILE_MACHINE_RISCV64, code, data, bytes(h), signed, b""))
    else:
        out = h + code + data
    put(out, 0x10, "Q", align(len(out), 4096) if image_size is None else image_size)
    for name, value in fields.items():
        code_, off = {"code0": ("I", 0), "code1": ("I", 4), "res1": ("I", 0x24),
                      "res2": ("Q", 0x28), "res3": ("I", 0x3C)}[name]
        put(out, off, code_, value)
    return bytes(out)


def loongarch_image(*, kernel_entry: int = 0x9000000000200000, kernel_asize: int | None = None,
                    text_offset: int = 0x200000, machine: int = IMAGE_FILE_MACHINE_LOONGARCH64,
                    signed: bool = False, code: bytes = b"\x00\x00\x40\x03" * 32,
                    data: bytes = b"loong-data" * 8) -> bytes:
    """A LoongArch vmlinux.efi (asm/image.h): MZ, kernel_entry, kernel_asize, text_offset, PE."""
    h = bytearray(64)
    h[:2] = b"MZ"
    put(h, 8, "Q", kernel_entry)
    put(h, 0x18, "Q", text_offset)
    out = bytearray(_kernel_pe_body(machine, code, data, bytes(h), signed, b""))
    put(out, 0x10, "Q", align(len(out), 0x10000) if kernel_asize is None else kernel_asize)
    return bytes(out)


# --------------------------------------------------------------------------- zboot

ZBOOT_COMPRESSIONS = {"gzip": "gzip", "lz4": "lz4", "lzma": "lzma", "lzo": "lzo",
                      "xzkern": "xz", "zstd22": "zstd"}


def zboot(inner: bytes | None = None, *, compression: str = "gzip",
          machine: int = IMAGE_FILE_MACHINE_ARM64, payload: bytes | None = None,
          signed: bool = False, payload_offset: int | None = None,
          payload_size: int | None = None, compress_type: bytes | None = None,
          size_trailer: int | None = None, image_type: bytes = b"zimg") -> bytes:
    """An EFI zboot image (zboot-header.S) carrying ``inner`` compressed.

    The payload sits at the start of the ``.data`` section.  For gzip the
    header's payload size covers the whole stream (its ISIZE is the
    decompressed size); for every other codec the le32 size is appended after
    the bytes the header counts (Makefile.zboot: ZBOOT_SIZE_LEN).
    """
    if inner is None:
        inner = arm64_image()
    algorithm = ZBOOT_COMPRESSIONS.get(compression, compression)
    if payload is None:
        payload = compress(algorithm, inner)
    trailer = b"" if compression == "gzip" else le32(len(inner) if size_trailer is None else size_trailer)
    h = bytearray(64)
    h[:2] = b"MZ"
    h[4:8] = image_type
    ctype = compression.encode() if compress_type is None else compress_type
    h[0x18:0x18 + len(ctype)] = ctype[:32]
    put(h, 0x38, "I", LINUX_PE_MAGIC)
    stub = b"\xfd\x7b\xbf\xa9" * 64
    out = bytearray(pe([(".text", stub), (".data", payload + trailer)], machine=machine, dos=bytes(h),
                       signed=signed))
    data_at = align(align(0x40 + 24 + PE_OPT_SIZE + 80, 0x200) + len(stub), 0x200)
    assert bytes(out[data_at:data_at + len(payload)]) == payload
    put(out, 8, "i", data_at if payload_offset is None else payload_offset)
    put(out, 12, "i", len(payload) if payload_size is None else payload_size)
    return bytes(out)


# --------------------------------------------------------------------------- bzImage

#: where each setup-header field is and which protocol version introduced it (boot.rst)
SETUP_FIELDS = {
    "setup_sects": (0x1F1, "B", 0x200), "root_flags": (0x1F2, "H", 0x200),
    "syssize": (0x1F4, "I", 0x204), "ram_size": (0x1F8, "H", 0x200),
    "vid_mode": (0x1FA, "H", 0x200), "root_dev": (0x1FC, "H", 0x200),
    "boot_flag": (0x1FE, "H", 0x200), "jump": (0x200, "H", 0x200),
    "header": (0x202, "I", 0x200), "version": (0x206, "H", 0x200),
    "realmode_swtch": (0x208, "I", 0x200), "start_sys_seg": (0x20C, "H", 0x200),
    "kernel_version": (0x20E, "H", 0x200), "type_of_loader": (0x210, "B", 0x200),
    "loadflags": (0x211, "B", 0x200), "setup_move_size": (0x212, "H", 0x200),
    "code32_start": (0x214, "I", 0x200), "ramdisk_image": (0x218, "I", 0x200),
    "ramdisk_size": (0x21C, "I", 0x200), "bootsect_kludge": (0x220, "I", 0x200),
    "heap_end_ptr": (0x224, "H", 0x201), "ext_loader_ver": (0x226, "B", 0x202),
    "ext_loader_type": (0x227, "B", 0x202), "cmd_line_ptr": (0x228, "I", 0x202),
    "initrd_addr_max": (0x22C, "I", 0x203), "kernel_alignment": (0x230, "I", 0x205),
    "relocatable_kernel": (0x234, "B", 0x205), "min_alignment": (0x235, "B", 0x20A),
    "xloadflags": (0x236, "H", 0x20C), "cmdline_size": (0x238, "I", 0x206),
    "hardware_subarch": (0x23C, "I", 0x207), "hardware_subarch_data": (0x240, "Q", 0x207),
    "payload_offset": (0x248, "I", 0x208), "payload_length": (0x24C, "I", 0x208),
    "setup_data": (0x250, "Q", 0x209), "pref_address": (0x258, "Q", 0x20A),
    "init_size": (0x260, "I", 0x20A), "handover_offset": (0x264, "I", 0x20B),
    "kernel_info_offset": (0x268, "I", 0x20F),
}


def header_end_for(version: int) -> int:
    """Where the setup header of ``version`` ends: after the last field that version has."""
    return max(off + struct.calcsize("<" + code)
               for off, code, since in SETUP_FIELDS.values() if since <= version)


def bzimage(*, version: int = 0x20F, setup_sects: int = 4, payload: bytes | None = None,
            compression: str = "gzip", vmlinux: bytes | None = None, pe: bool = False,
            signed: bool = False, header_end: int | None = None, fill_absent: int = 0,
            head: bytes = b"\xfc\xfa" * 0x100, tail: bytes = b"\xcc" * 0x100,
            trailing: bytes = b"", **fields) -> bytes:
    """A bzImage: boot sector + setup sectors, then the protected-mode kernel.

    The protected-mode kernel is ``head`` + payload + ``tail``; the payload
    is ``vmlinux`` (default a tiny ELF64) compressed as the kernel does.
    ``setup_sects`` is written as given; 0 means 4 sectors, as boot.rst says.
    Fields newer than ``version`` are filled with ``fill_absent`` so tests can
    check that the parser ignores them.  Any field of SETUP_FIELDS can be
    overridden by keyword (written even if newer than ``version``).
    """
    if payload is None:
        payload = compress_with_size(compression, vmlinux if vmlinux is not None else elf64())
    sects = setup_sects or 4
    setup_size = (sects + 1) * 512
    pm = head + payload + tail
    end = header_end_for(version) if header_end is None else header_end
    out = bytearray(setup_size)
    out[0x1F1:0x290] = bytes([fill_absent]) * (0x290 - 0x1F1)
    out[0x290:setup_size] = b"\xf4" * (setup_size - 0x290)
    values = {
        "setup_sects": setup_sects, "root_flags": 1, "syssize": (len(pm) + 15) // 16,
        "ram_size": 0, "vid_mode": 0xFFFF, "root_dev": 0, "boot_flag": 0xAA55,
        "jump": 0xEB | ((end - 0x202) << 8), "header": 0x53726448, "version": version,
        "realmode_swtch": 0, "start_sys_seg": 0x1000, "kernel_version": 0x100,
        "type_of_loader": 0, "loadflags": 0x81, "setup_move_size": 0x8000,
        "code32_start": 0x100000, "ramdisk_image": 0, "ramdisk_size": 0,
        "bootsect_kludge": 0, "heap_end_ptr": 0x5320, "ext_loader_ver": 0,
        "ext_loader_type": 0, "cmd_line_ptr": 0, "initrd_addr_max": 0x7FFFFFFF,
        "kernel_alignment": 0x200000, "relocatable_kernel": 1, "min_alignment": 21,
        "xloadflags": 0x7F, "cmdline_size": 2047, "hardware_subarch": 0,
        "hardware_subarch_data": 0, "payload_offset": len(head), "payload_length": len(payload),
        "setup_data": 0, "pref_address": 0x1000000, "init_size": 0x2000000,
        "handover_offset": 0x190, "kernel_info_offset": 0x4000,
    }
    unknown = set(fields) - set(values)
    if unknown:
        raise TypeError(f"unknown setup header fields {sorted(unknown)}")
    for name, (off, code, since) in SETUP_FIELDS.items():
        if since <= version or name in fields:
            put(out, off, code, fields.get(name, values[name]))
    out[0x200 + 0x100:0x200 + 0x120] = b"6.1.0-pykexec (synthetic)\0".ljust(0x20, b"\0")
    image = bytearray(out + pm)
    if pe:
        image[:2] = b"MZ"
        put(image, 0x3C, "I", 0x40)
        cert_at = align(len(image), 8)
        cert = win_certificate() if signed else b""
        secs = [SectionHeader(b".setup", setup_size - 0x200, 0x200, setup_size - 0x200, 0x200),
                SectionHeader(b".text", len(pm), setup_size, len(pm), setup_size,
                              SCN_CODE | SCN_READ | SCN_EXEC)]
        hdr = pe_headers(secs, machine=IMAGE_FILE_MACHINE_AMD64, entry=setup_size,
                         size_of_image=align(len(image), 0x200), size_of_headers=0x200,
                         file_alignment=0x200, section_alignment=0x200,
                         certificate_table=(cert_at, len(cert)) if signed else (0, 0))
        assert 0x40 + len(hdr) <= 0x1F1, "PE header must fit in the boot sector"
        image[0x40:0x40 + len(hdr)] = hdr
        if signed:
            image += bytes(cert_at - len(image)) + cert
    return bytes(image + trailing)


def bzimage_payload_range(image: bytes) -> tuple[int, int]:
    """[start, end) of the payload a 2.08+ header declares, read back from the bytes."""
    sects = image[0x1F1] or 4
    start = (sects + 1) * 512 + struct.unpack_from("<I", image, 0x248)[0]
    return start, start + struct.unpack_from("<I", image, 0x24C)[0]



# --------------------------------------------------------------------------- what is not a kernel

ZIMAGE_MAGIC, ZIMAGE_ENDIAN_FLAG = 0x016F2818, 0x04030201
IMAGE_FILE_MACHINE_ARMTHUMB_MIXED = 0x01C2


def arm_zimage(*, efi: bool = False, endian: str = "little", start: int = 0,
               size: int = 0x800, appended: bytes = b"") -> bytes:
    """A 32-bit ARM zImage (arch/arm/boot/compressed/head.S): eight NOPs (``mov r0, r0``,
    0xe1a00000), a branch, then at 0x24 the magic, start, end, the endianness flag
    0x04030201, 0x45454545 and a table pointer, all in the kernel's byte order.  With
    ``efi`` the file is also a PE image ("MZ" at 0, the PE header at 0x3c's offset), as
    CONFIG_EFI_STUB builds it.  ``appended`` goes after ``size`` bytes (a DTB)."""
    e = "<" if endian == "little" else ">"
    head = bytearray(struct.pack("<8I", *[0xE1A00000] * 8) + struct.pack("<I", 0xEA000000 | 0x0E))
    head += struct.pack(e + "6I", ZIMAGE_MAGIC, start, start + size, ZIMAGE_ENDIAN_FLAG,
                        0x45454545, start + 0x100)
    if efi:
        body = bytearray(pe([(".text", b"\x00\x00\xa0\xe1" * 64)], machine=IMAGE_FILE_MACHINE_ARMTHUMB_MIXED,
                            dos=bytes(head[:0x3C]) + bytes(4)))
        body[:2] = b"MZ"
    else:
        body = head
    body += bytes(max(size - len(body), 0))
    return bytes(body[:max(size, len(body))]) + appended


def cpio_newc(files: tuple[tuple[str, bytes], ...] = (("init", b"#!/bin/sh\n"),),
              *, magic: bytes = b"070701") -> bytes:
    """A newc (or, with magic 070702, crc) cpio archive ending with TRAILER!!!, as cpio(5)
    and the kernel's buffer-format.rst describe it; padded to 512 bytes as cpio pads."""
    out = bytearray()
    for ino, (name, data) in enumerate((*files, ("TRAILER!!!", b"")), start=1):
        raw = name.encode() + b"\0"
        mode = 0o100644 if name != "TRAILER!!!" else 0
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += magic + b"".join(b"%08X" % v for v in fields) + raw
        out += bytes(-len(out) % 4) + data + bytes(-len(data) % 4)
    return bytes(out + bytes(-len(out) % 512))


def uefi_fv(*, size: int = 0x2000, guid: bytes = bytes.fromhex("78e58c8c3d8a1c4f9935896185c32dd3"),
            volumes: int = 1, **overrides) -> bytes:
    """UEFI firmware volumes (PI Vol. 3 EFI_FIRMWARE_VOLUME_HEADER) back to back, each
    ``size`` bytes of erased flash (0xff) behind a 72-byte header whose u16 words sum to
    zero; the block map is one entry of 0x1000-byte blocks and the (0, 0) end."""
    h = {"FvLength": size, "Attributes": 0x0004FEFF, "HeaderLength": 72, "ExtHeaderOffset": 0,
         "Revision": 2}
    h.update(overrides)
    hdr = bytearray(bytes(16) + guid + struct.pack("<Q4sIHHHBB", h["FvLength"], b"_FVH", h["Attributes"],
                                                   h["HeaderLength"], 0, h["ExtHeaderOffset"], 0,
                                                   h["Revision"]))
    hdr += struct.pack("<IIII", size // 0x1000, 0x1000, 0, 0)
    put(hdr, 0x32, "H", -sum(struct.unpack("<36H", hdr)) & 0xFFFF)
    one = bytes(hdr) + b"\xff" * (size - len(hdr))
    return one * volumes

# --------------------------------------------------------------------------- catalogue

def samples() -> dict[str, bytes]:
    """One small valid image per registry format, named by the format the registry reports."""
    return {
        "bzimage": bzimage(),
        "arm64-image": arm64_image(),
        "riscv-image": riscv_image(),
        "loongarch-image": loongarch_image(),
        "zboot": zboot(),
        "uki": uki(),
        "uki-addon": addon(initrd=b"addon-initrd"),
        "pe": pe([(".text", b"\xc3" * 16), (".reloc", b"\0" * 8)]),
        "elf": elf64(),
        "multiboot2": multiboot2_image(),
        "multiboot": multiboot_image(),
        "arm-zimage": arm_zimage(),
        "cpio": cpio_newc(),
        "uefi-fv": uefi_fv(),
        **{alg: compress(alg, elf64()) for alg in ALGORITHMS},
    }


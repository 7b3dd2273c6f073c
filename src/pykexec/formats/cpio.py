"""cpio archives (initramfs): recognised and named, never loaded as a kernel.

Header formats (cpio(5), GNU cpio's "Archive Formats", the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst):

* newc, "070701", and crc, "070702": a 110-byte header of ASCII hex fields
  (magic[6], then ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
  devminor, rdevmajor, rdevminor, namesize, check, 8 digits each); the name
  (namesize bytes with its NUL) is padded so header + name is a multiple of 4,
  the file data to a multiple of 4.  The only formats the kernel unpacks as an
  initramfs.
* odc, "070707": a 76-byte header of ASCII octal fields (magic, dev, ino,
  mode, uid, gid, nlink, rdev 6 digits, mtime 11, namesize 6, filesize 11);
  no padding.
* old binary: 26 bytes of u16 (magic 070707 in the writer's byte order, dev,
  ino, mode, uid, gid, nlink, rdev, mtime[2], namesize, filesize[2], the most
  significant half first); name and data padded to even lengths.

The archive ends with an entry named "TRAILER!!!".  Compressed archives are
unwrapped by the compression layers, then named here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError, NotLoadable
from .layer import Buffer, Format, Layer, ignoring_limits

TRAILER = b"TRAILER!!!"
MAX_ENTRIES = 1 << 20
NEWC, CRC, ODC = b"070701", b"070702", b"070707"
BINARY_MAGIC = 0o070707
NEWC_HEADER, ODC_HEADER, BINARY_HEADER = 110, 76, 26
VARIANTS = {NEWC: "newc", CRC: "crc", ODC: "odc"}


@dataclass(frozen=True)
class Cpio(Layer):
    FORMAT = "cpio"
    variant: str = "newc"
    entries: int = 0
    first_entry: str = ""
    archive_size: int = 0
    trailing_bytes: int = 0

    def refusal(self) -> NotLoadable:
        kind = f"a cpio archive ({self.variant})"
        if self.variant in ("newc", "crc"):
            why = "an initramfs, not a kernel: give it with --initrd"
        else:
            why = "not a kernel, nor an initramfs the kernel unpacks (it reads newc and crc only)"
        return NotLoadable("cpio", f"this is {kind}, {why}", field="magic", offset=0)


def _variant(data: Buffer) -> str | None:
    head = bytes(data[:6])
    if head in VARIANTS:
        return VARIANTS[head]
    if len(data) >= 2 and BINARY_MAGIC in (struct.unpack_from("<H", data)[0],
                                           struct.unpack_from(">H", data)[0]):
        return "binary"
    return None


def probe(data: Buffer) -> bool:
    return _variant(data) is not None


def _number(data: Buffer, at: int, width: int, base: int, field: str) -> int:
    text = bytes(data[at:at + width])
    try:
        if len(text) < width:
            raise ValueError
        return int(text, base)
    except ValueError:
        raise FormatError("cpio", f"{field} {text!r} is not {width} {'hex' if base == 16 else 'octal'} "
                          "digits", field=field, offset=at) from None


def _entry(data: Buffer, at: int, variant: str) -> tuple[bytes, int]:
    """The name of the entry at ``at`` and where the next one starts."""
    if variant in ("newc", "crc"):
        if bytes(data[at:at + 6]) not in (NEWC, CRC):
            raise FormatError("cpio", f"no {variant} magic where an entry should start",
                              field="c_magic", offset=at)
        filesize = _number(data, at + 54, 8, 16, "c_filesize")
        namesize = _number(data, at + 94, 8, 16, "c_namesize")
        name_at = at + NEWC_HEADER
        data_at = (name_at + namesize + 3) & ~3
        end = data_at + ((filesize + 3) & ~3)
    elif variant == "odc":
        if bytes(data[at:at + 6]) != ODC:
            raise FormatError("cpio", "no odc magic where an entry should start", field="c_magic",
                              offset=at)
        namesize = _number(data, at + 59, 6, 8, "c_namesize")
        filesize = _number(data, at + 65, 11, 8, "c_filesize")
        name_at = at + ODC_HEADER
        data_at = name_at + namesize
        end = data_at + filesize
    else:
        if at + BINARY_HEADER > len(data):
            raise FormatError("cpio", "entry header runs past the end", field="c_magic", offset=at)
        order = "<" if struct.unpack_from("<H", data, at)[0] == BINARY_MAGIC else ">"
        if struct.unpack_from(order + "H", data, at)[0] != BINARY_MAGIC:
            raise FormatError("cpio", "no binary magic where an entry should start",
                              field="c_magic", offset=at)
        namesize, high, low = struct.unpack_from(order + "3H", data, at + 20)
        filesize = high << 16 | low
        name_at = at + BINARY_HEADER
        data_at = name_at + namesize + (namesize & 1)
        end = data_at + filesize + (filesize & 1)
    if namesize == 0 or end > len(data):
        raise FormatError("cpio", f"entry ({namesize}-byte name, {filesize}-byte data) runs past "
                          f"the {len(data):#x}-byte archive" if namesize else "entry without a name",
                          field="c_filesize" if namesize else "c_namesize", offset=at)
    return bytes(data[name_at:name_at + namesize]).rstrip(b"\0"), end


def parse(data: Buffer) -> Cpio:
    variant = _variant(data)
    if variant is None:
        raise FormatError("cpio", "no cpio magic (070701, 070702, 070707)", field="c_magic", offset=0)
    at, count, first = 0, 0, b""
    while True:
        name, end = _entry(data, at, variant)
        if name == TRAILER:
            at = end
            break
        count += 1
        first = first or name
        at = end
        if count > MAX_ENTRIES:
            raise FormatError("cpio", f"more than {MAX_ENTRIES} entries", field="c_magic", offset=at)
    return Cpio(arch=None, data=data, variant=variant, entries=count,
                first_entry=first.decode("utf-8", "backslashreplace"), archive_size=at,
                trailing_bytes=len(data) - at)


FORMAT = Format("cpio", probe, ignoring_limits(parse), "cpio magic 070701, 070702 or 070707 at 0")

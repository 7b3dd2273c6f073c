"""UEFI firmware volumes (PI Specification, Volume 3, "EFI_FIRMWARE_VOLUME_HEADER").

Firmware, not a kernel: recognised and named so that a user who hands
pykexec OVMF_CODE.fd is told so.  The header::

    0x00  u8  ZeroVector[16]
    0x10  GUID FileSystemGuid     the volume's file system (FFS2, FFS3, NV variable store)
    0x20  u64 FvLength            the whole volume, header included
    0x28  u32 Signature           "_FVH"
    0x2c  u32 Attributes
    0x30  u16 HeaderLength
    0x32  u16 Checksum            the header's u16 words sum to zero
    0x34  u16 ExtHeaderOffset
    0x36  u8  Reserved
    0x37  u8  Revision            2
    0x38  EFI_FV_BLOCK_MAP_ENTRY BlockMap[] (u32 NumBlocks, u32 Length), ending with (0, 0)

Volumes follow one another (OVMF_CODE.fd holds two); they are counted while
each next one starts with a header.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import FormatError, NotLoadable
from ..layout import Field, Layout
from .layer import Buffer, Format, Layer, ignoring_limits

SIGNATURE = b"_FVH"
HEADER = Layout("uefi-fv", [
    Field("ZeroVector", 0x00, "16s"), Field("FileSystemGuid", 0x10, "16s"),
    Field("FvLength", 0x20, "Q"), Field("Signature", 0x28, "4s"), Field("Attributes", 0x2C, "I"),
    Field("HeaderLength", 0x30, "H"), Field("Checksum", 0x32, "H"),
    Field("ExtHeaderOffset", 0x34, "H"), Field("Reserved", 0x36, "B"), Field("Revision", 0x37, "B"),
])
# PI Specification Vol. 3 (FFS2/FFS3) and EDK II MdePkg (the NV variable store)
FILE_SYSTEMS = {
    "8c8ce578-8a3d-4f1c-9935-896185c32dd3": "EFI_FIRMWARE_FILE_SYSTEM2_GUID",
    "5473c07a-3dcb-4dca-bd6f-1e9689e7349a": "EFI_FIRMWARE_FILE_SYSTEM3_GUID",
    "fff12b8d-7696-4c8b-a985-2747075b4f50": "EFI_SYSTEM_NV_DATA_FV_GUID",
}
MAX_VOLUMES = 4096


@dataclass(frozen=True)
class UefiFirmwareVolume(Layer):
    FORMAT = "uefi-fv"
    file_system: str = ""
    file_system_guid: str = ""
    fv_length: int = 0
    header_length: int = 0
    revision: int = 0
    checksum_ok: bool = False
    volumes: int = 1
    truncated: bool = False

    def refusal(self) -> NotLoadable:
        return NotLoadable("uefi-fv", "this is a UEFI firmware volume (firmware such as OVMF_CODE.fd), "
                           "not a kernel, which pykexec does not load", field="Signature",
                           offset=HEADER.offset("Signature"))


def probe(data: Buffer) -> bool:
    return len(data) >= HEADER.size and bytes(data[0x28:0x2C]) == SIGNATURE


def parse(data: Buffer) -> UefiFirmwareVolume:
    if not probe(data):
        raise FormatError("uefi-fv", "no _FVH signature", field="Signature", offset=0x28)
    h = HEADER.unpack(data)
    length = h["HeaderLength"]
    if length < HEADER.size or length % 2 or length > len(data):
        raise FormatError("uefi-fv", f"HeaderLength {length} is not an even size between "
                          f"{HEADER.size} and the {len(data)}-byte file", field="HeaderLength",
                          offset=HEADER.offset("HeaderLength"))
    guid = str(uuid.UUID(bytes_le=h["FileSystemGuid"]))
    return UefiFirmwareVolume(
        arch=None, data=data, file_system=FILE_SYSTEMS.get(guid, "unknown"), file_system_guid=guid,
        fv_length=h["FvLength"], header_length=length, revision=h["Revision"],
        checksum_ok=sum(struct.unpack_from(f"<{length // 2}H", data)) & 0xFFFF == 0,
        volumes=_volumes(data), truncated=h["FvLength"] > len(data))


def _volumes(data: Buffer) -> int:
    """How many volumes follow one another from the start of the file."""
    at, count = 0, 0
    while count < MAX_VOLUMES and at + HEADER.size <= len(data) and bytes(data[at + 0x28:at + 0x2C]) == SIGNATURE:
        count += 1
        length = struct.unpack_from("<Q", data, at + 0x20)[0]
        if length < HEADER.size:
            break
        at += length
    return count


FORMAT = Format("uefi-fv", probe, ignoring_limits(parse), "_FVH at 0x28")

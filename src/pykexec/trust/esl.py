"""EFI signature lists: the format of the UEFI ``db``, ``dbx`` and shim's ``MokListRT``.

UEFI Specification 2.10, §32.4.1 "Signature Database"::

    typedef struct {
        EFI_GUID SignatureType;
        UINT32   SignatureListSize;
        UINT32   SignatureHeaderSize;
        UINT32   SignatureSize;
        // UINT8          SignatureHeader[SignatureHeaderSize];
        // EFI_SIGNATURE_DATA Signatures[...][SignatureSize];
    } EFI_SIGNATURE_LIST;

    typedef struct {
        EFI_GUID SignatureOwner;
        UINT8    SignatureData[...];
    } EFI_SIGNATURE_DATA;

A variable read from efivarfs starts with its 4-byte attributes
(Documentation/filesystems/efivarfs.rst); :func:`strip_attributes` drops them.
GUIDs are stored in the mixed-endian EFI_GUID layout (``uuid.UUID(bytes_le=...)``).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import FormatError
from . import efivars
from .efivars import ATTRIBUTES_SIZE

LAYER = "efi signature list"
HEADER = struct.Struct("<16sIII")
OWNER_SIZE = 16

EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA1_GUID = uuid.UUID("826ca512-cf10-4ac9-b187-be01496631bd")
EFI_CERT_SHA384_GUID = uuid.UUID("ff3e5307-9fd0-48c9-85f1-8ad56c701e01")
EFI_CERT_SHA512_GUID = uuid.UUID("093e0fae-a6c4-4f50-9f1b-d41e2b89c19a")
EFI_CERT_X509_SHA256_GUID = uuid.UUID("3bd2a492-96c0-4079-b420-fcf98ef103ed")
EFI_CERT_X509_SHA384_GUID = uuid.UUID("7076876e-80c2-4ee6-aad2-28b349a6865b")
EFI_CERT_X509_SHA512_GUID = uuid.UUID("446dbf63-2502-4cda-bcfa-2465d2b0fe9d")
TYPE_NAMES = {
    EFI_CERT_SHA256_GUID: "sha256",
    EFI_CERT_X509_GUID: "x509",
    EFI_CERT_SHA1_GUID: "sha1",
    EFI_CERT_SHA384_GUID: "sha384",
    EFI_CERT_SHA512_GUID: "sha512",
    EFI_CERT_X509_SHA256_GUID: "x509-sha256",
    EFI_CERT_X509_SHA384_GUID: "x509-sha384",
    EFI_CERT_X509_SHA512_GUID: "x509-sha512",
}
# Fixed SignatureSize (owner + data) for the hash types
FIXED_SIZES = {
    EFI_CERT_SHA256_GUID: OWNER_SIZE + 32,
    EFI_CERT_SHA1_GUID: OWNER_SIZE + 20,
    EFI_CERT_SHA384_GUID: OWNER_SIZE + 48,
    EFI_CERT_SHA512_GUID: OWNER_SIZE + 64,
}

EFI_GLOBAL_VARIABLE = uuid.UUID(efivars.EFI_GLOBAL_VARIABLE)
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID(efivars.EFI_IMAGE_SECURITY_DATABASE)
SHIM_LOCK_GUID = uuid.UUID(efivars.SHIM_LOCK_GUID)


@dataclass(frozen=True)
class SignatureEntry:
    """One EFI_SIGNATURE_DATA, tagged with its list's type."""

    type: uuid.UUID
    owner: uuid.UUID
    data: bytes

    @property
    def kind(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))


def parse(data: bytes, *, source: str = LAYER) -> tuple[SignatureEntry, ...]:
    """Every entry of a sequence of EFI_SIGNATURE_LISTs (an empty buffer is an empty database)."""
    out, pos = [], 0
    view = memoryview(data)
    while pos < len(view):
        if pos + HEADER.size > len(view):
            raise FormatError(source, f"{len(view) - pos} bytes left, too few for an "
                              "EFI_SIGNATURE_LIST header", field="SignatureListSize", offset=pos)
        raw_type, list_size, header_size, sig_size = HEADER.unpack_from(view, pos)
        sig_type = uuid.UUID(bytes_le=raw_type)
        body = HEADER.size + header_size
        if list_size < body or pos + list_size > len(view):
            raise FormatError(source, f"SignatureListSize {list_size:#x} does not fit "
                              f"(header {body:#x}, {len(view) - pos:#x} bytes left)",
                              field="SignatureListSize", offset=pos + 16)
        if sig_size <= OWNER_SIZE or (list_size - body) % sig_size:
            raise FormatError(source, f"SignatureSize {sig_size:#x} does not divide the "
                              f"{list_size - body:#x} bytes of signatures",
                              field="SignatureSize", offset=pos + 24)
        fixed = FIXED_SIZES.get(sig_type)
        if fixed is not None and sig_size != fixed:
            raise FormatError(source, f"SignatureSize {sig_size} for {TYPE_NAMES[sig_type]} "
                              f"entries, expected {fixed}", field="SignatureSize", offset=pos + 24)
        at = pos + body
        while at < pos + list_size:
            owner = uuid.UUID(bytes_le=bytes(view[at:at + OWNER_SIZE]))
            out.append(SignatureEntry(sig_type, owner, bytes(view[at + OWNER_SIZE:at + sig_size])))
            at += sig_size
        pos += list_size
    return tuple(out)


def build(entries: list[tuple[uuid.UUID, bytes]], owner: uuid.UUID = uuid.UUID(int=0)) -> bytes:
    """One EFI_SIGNATURE_LIST per entry (X.509 certificates vary in size)."""
    out = bytearray()
    for sig_type, data in entries:
        size = OWNER_SIZE + len(data)
        out += HEADER.pack(sig_type.bytes_le, HEADER.size + size, 0, size)
        out += owner.bytes_le + data
    return bytes(out)


def strip_attributes(var: bytes, *, source: str) -> bytes:
    """An efivarfs file's payload: everything after the 4-byte attributes."""
    if len(var) < ATTRIBUTES_SIZE:
        raise FormatError(source, f"{len(var)} bytes, too short for the 4-byte attributes")
    return var[ATTRIBUTES_SIZE:]


def looks_like_list(data: bytes) -> bool:
    """Whether ``data`` starts with a plausible EFI_SIGNATURE_LIST (a known type GUID)."""
    return len(data) >= HEADER.size and uuid.UUID(bytes_le=bytes(data[:16])) in TYPE_NAMES

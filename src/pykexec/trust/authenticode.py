"""Authenticode signatures of PE/COFF images: what is hashed, and what the signature says.

Specifications:

* Microsoft, "Windows Authenticode Portable Executable Signature Format"
  (Authenticode_PE.docx), "Calculating the PE Image Hash";
* the PE/COFF specification, "The Attribute Certificate Table (Image Only)":
  WIN_CERTIFICATE { dwLength u32, wRevision u16, wCertificateType u16,
  bCertificate[] }, each entry "quadword-aligned";
* RFC 2315 (PKCS #7 v1.5) SignedData, RFC 5652 §5.4 for the signed attributes;
* UEFI 2.10 §32.2.4: WIN_CERTIFICATE_UEFI_GUID with EFI_CERT_TYPE_PKCS7_GUID.

The image hash ("authentihash") covers the whole file except three ranges:
the optional header's CheckSum, the Certificate Table entry of the data
directory, and the certificate table itself.  That is what signtool,
osslsigncode and signify hash; it covers at least every byte the
specification's section-by-section walk covers, so an image that verifies
here verifies there.  Zero padding *after* the certificate table (left by
tools that pad a signed inner image, e.g. a UKI's ``.linux`` or a zboot
payload) was never seen by the signer and is left out; any other byte after
the table stays in the hash, so appended data makes the digest mismatch.

Everything here is a pure parser: bytes in, frozen dataclasses out.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

import pefile

from ..errors import FormatError
from ..formats.pe import (DATA_DIRECTORY, DOS_HEADER, IMAGE_DIRECTORY_ENTRY_SECURITY, OPTIONAL_HEADER,
                          OPTIONAL_HEADER_SIZES, data_directory_offset)
from . import der

LAYER = "authenticode"

# WIN_CERTIFICATE
WIN_CERTIFICATE = struct.Struct("<IHH")
WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
EFI_CERT_TYPE_PKCS7_GUID = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")

# Object identifiers
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
OID_SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_NESTED_SIGNATURE = "1.3.6.1.4.1.311.2.4.1"
DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}


@dataclass(frozen=True)
class SignedLayout:
    """Where the excluded fields are, and where the signed bytes end."""

    checksum_offset: int
    security_entry_offset: int | None
    cert_table_offset: int
    cert_table_size: int
    end: int
    zero_padding: int
    trailing: int

    @property
    def signed(self) -> bool:
        return self.cert_table_size > 0

    def ranges(self) -> list[tuple[int, int]]:
        """Half-open [start, end) ranges that are hashed, in file order."""
        skips = [(self.checksum_offset, OPTIONAL_HEADER.fields["CheckSum"].size)]
        if self.security_entry_offset is not None:
            skips.append((self.security_entry_offset, DATA_DIRECTORY.size))
        if self.signed:
            skips.append((self.cert_table_offset, self.cert_table_size))
        out, pos = [], 0
        for start, size in sorted(skips):
            out.append((pos, start))
            pos = start + size
        out.append((pos, self.end))
        return [(a, b) for a, b in out if b > a]


@dataclass(frozen=True)
class CertificateEntry:
    """One WIN_CERTIFICATE of the attribute certificate table."""

    offset: int
    length: int
    revision: int
    cert_type: int
    content: bytes

    @property
    def pkcs7(self) -> bytes | None:
        """The PKCS #7 SignedData, for the two entry types that carry one."""
        if self.cert_type == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            return self.content
        if (self.cert_type == WIN_CERT_TYPE_EFI_GUID and len(self.content) >= 16
                and uuid.UUID(bytes_le=self.content[:16]) == EFI_CERT_TYPE_PKCS7_GUID):
            return self.content[16:]
        return None


@dataclass(frozen=True)
class SignerInfo:
    """RFC 2315 §9.2 SignerInfo, with the signed attributes Authenticode uses."""

    issuer: bytes | None
    serial: int | None
    subject_key_id: bytes | None
    digest_algorithm: str
    signature_algorithm: str
    signature: bytes
    signed_attributes: bytes | None
    message_digest: bytes | None
    content_type: str | None
    nested_signatures: int


@dataclass(frozen=True)
class SignedData:
    """The SignedData of one Authenticode signature."""

    digest_algorithms: tuple[str, ...]
    content_type: str
    content: bytes
    data_type: str
    image_digest_algorithm: str
    image_digest: bytes
    certificates: tuple[bytes, ...]
    signers: tuple[SignerInfo, ...]


# ---------------------------------------------------------------- the image hash


def layout(data: bytes) -> SignedLayout:
    """The excluded ranges and the end of the signed bytes of a PE image."""
    try:
        pe = pefile.PE(data=bytes(data), fast_load=True)
    except pefile.PEFormatError as e:
        raise FormatError(LAYER, f"not a PE image: {e.value}", field="e_lfanew",
                          offset=DOS_HEADER.offset("e_lfanew")) from e
    opt = pe.OPTIONAL_HEADER
    opt_off = opt.get_file_offset()
    magic = opt.Magic
    if magic not in OPTIONAL_HEADER_SIZES:
        raise FormatError(LAYER, f"optional header magic {magic:#x} is neither PE32 nor PE32+",
                          field="Magic", offset=opt_off)
    size_of_opt = pe.FILE_HEADER.SizeOfOptionalHeader
    entry_rel = data_directory_offset(magic, IMAGE_DIRECTORY_ENTRY_SECURITY)
    entry_off = opt_off + entry_rel
    has_entry = (opt.NumberOfRvaAndSizes > IMAGE_DIRECTORY_ENTRY_SECURITY
                 and entry_rel + DATA_DIRECTORY.size <= size_of_opt)
    cert_off = cert_size = 0
    if has_entry and entry_off + DATA_DIRECTORY.size > len(data):
        raise FormatError(LAYER, "the data directory runs past the end of the file",
                          field="DataDirectory[SECURITY]", offset=entry_off)
    if has_entry:
        entry = DATA_DIRECTORY.unpack(data, entry_off)
        cert_off, cert_size = entry["VirtualAddress"], entry["Size"]
        if cert_size and (cert_off < opt_off + size_of_opt or cert_off + cert_size > len(data)):
            raise FormatError(LAYER, f"certificate table [{cert_off:#x}, +{cert_size:#x}) is not "
                              f"inside the {len(data):#x}-byte file after the headers",
                              field="DataDirectory[SECURITY]", offset=entry_off)
    end = len(data)
    padding = trailing = 0
    if cert_size:
        after = cert_off + cert_size
        tail = memoryview(data)[after:]
        if not any(tail):
            end, padding = after, len(tail)
        else:
            trailing = len(tail)
    return SignedLayout(checksum_offset=opt_off + OPTIONAL_HEADER.offset("CheckSum"),
                        security_entry_offset=entry_off if has_entry else None,
                        cert_table_offset=cert_off, cert_table_size=cert_size, end=end,
                        zero_padding=padding, trailing=trailing)


def authentihash(data: bytes, algorithm: str = "sha256", where: SignedLayout | None = None) -> bytes:
    """The Authenticode digest of a PE image with ``algorithm`` (a hashlib name)."""
    where = where or layout(data)
    h = hashlib.new(algorithm)
    view = memoryview(data)
    for start, end in where.ranges():
        h.update(view[start:end])
    return h.digest()


# ---------------------------------------------------------------- the certificate table


def certificate_entries(data: bytes,
                        where: SignedLayout | None = None) -> tuple[CertificateEntry, ...]:
    """Every WIN_CERTIFICATE in the table; zero padding after the last one is allowed."""
    where = where or layout(data)
    if not where.signed:
        return ()
    table = memoryview(data)[where.cert_table_offset:where.cert_table_offset + where.cert_table_size]
    out, pos = [], 0
    while pos + WIN_CERTIFICATE.size <= len(table):
        length, revision, cert_type = WIN_CERTIFICATE.unpack_from(table, pos)
        at = where.cert_table_offset + pos
        if length == 0 and not any(table[pos:]):
            break
        if length <= WIN_CERTIFICATE.size or pos + length > len(table):
            raise FormatError(LAYER, f"WIN_CERTIFICATE dwLength {length:#x} does not fit the "
                              f"{len(table) - pos:#x} bytes left of the table",
                              field="dwLength", offset=at)
        if revision != WIN_CERT_REVISION_2_0:
            raise FormatError(LAYER, f"WIN_CERTIFICATE revision {revision:#06x}, expected 0x0200",
                              field="wRevision", offset=at + 4)
        out.append(CertificateEntry(at, length, revision, cert_type,
                                    bytes(table[pos + WIN_CERTIFICATE.size:pos + length])))
        pos += (length + 7) & ~7
    if any(table[pos:]):
        raise FormatError(LAYER, "non-zero bytes after the last WIN_CERTIFICATE",
                          field="certificate table", offset=where.cert_table_offset + pos)
    return tuple(out)


# ---------------------------------------------------------------- PKCS #7 SignedData


def parse_signed_data(blob: bytes) -> SignedData:
    """RFC 2315 ContentInfo → SignedData, with Authenticode's SpcIndirectDataContent."""
    ci = der.read_one(_strip_zero_tail(blob), LAYER).expect(der.SEQUENCE, "ContentInfo", LAYER)
    kids = ci.children(LAYER)
    if len(kids) != 2 or der.oid(kids[0], LAYER) != OID_SIGNED_DATA:
        raise FormatError(LAYER, "ContentInfo is not pkcs7-signedData")
    sd = _explicit(kids[1], "SignedData").expect(der.SEQUENCE, "SignedData", LAYER).children(LAYER)
    if len(sd) < 4:
        raise FormatError(LAYER, "SignedData has fewer than 4 fields")
    algorithms = sd[1].expect(der.SET, "digestAlgorithms", LAYER).children(LAYER)
    digest_algorithms = tuple(_digest_name(der.algorithm(a, LAYER)) for a in algorithms)
    encap = sd[2].expect(der.SEQUENCE, "contentInfo", LAYER).children(LAYER)
    if not encap:
        raise FormatError(LAYER, "SignedData's contentInfo is empty: no signed content type")
    content_type = der.oid(encap[0], LAYER)
    if content_type != OID_SPC_INDIRECT_DATA or len(encap) != 2:
        raise FormatError(LAYER, f"signed content type is {content_type}, expected "
                          f"SpcIndirectDataContent ({OID_SPC_INDIRECT_DATA})")
    spc = _explicit(encap[1], "content").expect(der.SEQUENCE, "SpcIndirectDataContent", LAYER)
    data_type, image_alg, image_digest = _spc(spc)
    certificates: tuple[bytes, ...] = ()
    rest = sd[3:]
    if rest and rest[0].tag == 0xA0:
        certificates = tuple(c.raw for c in rest[0].children(LAYER))
        rest = rest[1:]
    if rest and rest[0].tag == 0xA1:
        rest = rest[1:]
    if len(rest) != 1:
        raise FormatError(LAYER, "SignedData: expected signerInfos after the certificates")
    signers = tuple(_signer(s) for s in rest[0].expect(der.SET, "signerInfos", LAYER).children(LAYER))
    if not signers:
        raise FormatError(LAYER, "SignedData has no SignerInfo")
    return SignedData(digest_algorithms=digest_algorithms, content_type=content_type,
                      content=spc.value, data_type=data_type, image_digest_algorithm=image_alg,
                      image_digest=image_digest, certificates=certificates, signers=signers)


def _strip_zero_tail(blob: bytes) -> bytes:
    """sbsign and signtool pad bCertificate to 8 bytes with zeros after the DER."""
    el = der.read(blob, 0, LAYER)
    if any(blob[len(el.raw):]):
        raise FormatError(LAYER, "non-zero bytes follow the PKCS #7 structure in bCertificate")
    return blob[:len(el.raw)]


def _explicit(el: der.Element, what: str) -> der.Element:
    kids = el.expect(0xA0, f"[0] EXPLICIT {what}", LAYER).children(LAYER)
    if len(kids) != 1:
        raise FormatError(LAYER, f"[0] EXPLICIT {what} holds {len(kids)} elements")
    return kids[0]


def _digest_name(oid: str) -> str:
    name = DIGESTS.get(oid)
    if name is None:
        raise FormatError(LAYER, f"unknown digest algorithm {oid}")
    return name


def _spc(spc: der.Element) -> tuple[str, str, bytes]:
    """SpcIndirectDataContent ::= SEQUENCE {
        data SpcAttributeTypeAndOptionalValue, messageDigest DigestInfo }"""
    kids = spc.children(LAYER)
    if len(kids) != 2:
        raise FormatError(LAYER, "SpcIndirectDataContent must have 2 fields")
    attr = kids[0].expect(der.SEQUENCE, "SpcAttributeTypeAndOptionalValue", LAYER).children(LAYER)
    data_type = der.oid(attr[0], LAYER) if attr else ""
    info = kids[1].expect(der.SEQUENCE, "DigestInfo", LAYER).children(LAYER)
    if len(info) != 2:
        raise FormatError(LAYER, "DigestInfo must have 2 fields")
    alg = _digest_name(der.algorithm(info[0], LAYER))
    digest = info[1].expect(der.OCTET_STRING, "DigestInfo.digest", LAYER).value
    return data_type, alg, digest


def _signer(el: der.Element) -> SignerInfo:
    kids = el.expect(der.SEQUENCE, "SignerInfo", LAYER).children(LAYER)
    if len(kids) < 5:
        raise FormatError(LAYER, "SignerInfo has fewer than 5 fields")
    issuer = serial = ski = None
    sid = kids[1]
    if sid.tag == der.SEQUENCE:
        ias = sid.children(LAYER)
        if len(ias) != 2:
            raise FormatError(LAYER, "IssuerAndSerialNumber must have 2 fields")
        issuer, serial = ias[0].expect(der.SEQUENCE, "issuer", LAYER).raw, der.integer(ias[1], LAYER)
    elif sid.tag == 0x80:
        ski = sid.value
    else:
        raise FormatError(LAYER, f"SignerInfo sid has tag {sid.tag:#04x}")
    digest_algorithm = _digest_name(der.algorithm(kids[2], LAYER))
    pos = 3
    signed = message_digest = content_type = None
    if kids[pos].tag == 0xA0:
        signed = b"\x31" + kids[pos].raw[1:]
        for attr in kids[pos].children(LAYER):
            a = attr.expect(der.SEQUENCE, "Attribute", LAYER).children(LAYER)
            if len(a) != 2:
                raise FormatError(LAYER, "Attribute must have 2 fields")
            values = a[1].expect(der.SET, "attrValues", LAYER).children(LAYER)
            kind = der.oid(a[0], LAYER)
            if kind in (OID_MESSAGE_DIGEST, OID_CONTENT_TYPE) and len(values) != 1:
                raise FormatError(LAYER, f"signed attribute {kind} must have exactly one value")
            if kind == OID_MESSAGE_DIGEST:
                message_digest = values[0].expect(der.OCTET_STRING, "messageDigest", LAYER).value
            elif kind == OID_CONTENT_TYPE:
                content_type = der.oid(values[0], LAYER)
        pos += 1
    if pos + 2 > len(kids):
        raise FormatError(LAYER, "SignerInfo: missing signature algorithm or signature")
    signature_algorithm = der.algorithm(kids[pos], LAYER)
    signature = kids[pos + 1].expect(der.OCTET_STRING, "encryptedDigest", LAYER).value
    nested = 0
    if pos + 2 < len(kids) and kids[pos + 2].tag == 0xA1:
        for attr in kids[pos + 2].children(LAYER):
            a = attr.children(LAYER)
            if a and der.oid(a[0], LAYER) == OID_NESTED_SIGNATURE and len(a) == 2:
                nested += len(a[1].children(LAYER))
    return SignerInfo(issuer=issuer, serial=serial, subject_key_id=ski,
                      digest_algorithm=digest_algorithm, signature_algorithm=signature_algorithm,
                      signature=signature, signed_attributes=signed, message_digest=message_digest,
                      content_type=content_type, nested_signatures=nested)


def certificate_issuer_and_serial(cert_der: bytes) -> tuple[bytes, int]:
    """The issuer Name's exact encoding and the serial number (RFC 5280 §4.1)."""
    tbs = der.read_one(cert_der, LAYER).children(LAYER)[0].children(LAYER)
    if tbs and tbs[0].tag == 0xA0:
        tbs = tbs[1:]
    return tbs[2].raw, der.integer(tbs[0], LAYER)

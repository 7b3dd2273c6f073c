"""The Authenticode image hash, the certificate table and the PKCS #7 parser."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pykexec.errors import FormatError
from pykexec.trust import authenticode, der
from tests import builders


def spec_hash(data: bytes) -> bytes:
    """Authenticode_PE.docx, "Calculating the PE Image Hash", written out independently for
    an image whose sections follow the headers back to back (as builders.pe lays them out)."""
    e_lfanew = struct.unpack_from("<I", data, 0x3C)[0]
    opt = e_lfanew + 24
    nsections, opt_size = struct.unpack_from("<H", data, e_lfanew + 6)[0], struct.unpack_from(
        "<H", data, e_lfanew + 20)[0]
    size_of_headers = struct.unpack_from("<I", data, opt + 60)[0]
    cert_off, cert_size = struct.unpack_from("<II", data, opt + 144)
    h = hashlib.sha256()
    h.update(data[:opt + 64])
    h.update(data[opt + 68:opt + 144])
    h.update(data[opt + 152:size_of_headers])
    table = opt + opt_size
    sections = sorted(struct.unpack_from("<8sIIII", data, table + 40 * i) for i in range(nsections))
    sections = sorted(sections, key=lambda s: s[4])
    hashed = size_of_headers
    for _name, _vs, _va, raw_size, raw_ptr in sections:
        if raw_size:
            h.update(data[raw_ptr:raw_ptr + raw_size])
            hashed += raw_size
    end = len(data) - cert_size
    if end > hashed:
        h.update(data[hashed:end])
    return h.digest()


def test_authentihash_matches_the_specification_walk(uki_bytes):
    assert authenticode.authentihash(uki_bytes) == spec_hash(uki_bytes)


def test_authentihash_of_a_signed_image_matches_the_specification_walk(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.signer)
    assert authenticode.authentihash(signed) == spec_hash(signed)


def test_layout_pins_the_excluded_fields(uki_bytes):
    where = authenticode.layout(uki_bytes)
    e_lfanew = struct.unpack_from("<I", uki_bytes, 0x3C)[0]
    assert where.checksum_offset == e_lfanew + 24 + 64
    assert where.security_entry_offset == e_lfanew + 24 + 144
    assert not where.signed and where.end == len(uki_bytes)


def test_layout_refuses_a_certificate_table_past_the_end(uki_bytes):
    bad = bytearray(uki_bytes)
    entry = authenticode.layout(uki_bytes).security_entry_offset
    bad[entry:entry + 8] = struct.pack("<II", len(bad) - 8, 64)
    with pytest.raises(FormatError, match="certificate table"):
        authenticode.layout(bytes(bad))


def _with_table(table: bytes) -> bytes:
    image = builders.pe([(".text", b"\xcc" * 64)])
    at = len(image)
    out = bytearray(image + table)
    entry = authenticode.layout(image).security_entry_offset
    out[entry:entry + 8] = struct.pack("<II", at, len(table))
    return bytes(out)


def test_several_entries_and_zero_padding_in_the_table():
    table = builders.win_certificate(b"\x30\x03\x02\x01\x01") + builders.win_certificate(b"\x30\x00")
    entries = authenticode.certificate_entries(_with_table(table + bytes(16)))
    assert [e.content for e in entries] == [b"\x30\x03\x02\x01\x01", b"\x30\x00"]
    assert entries[1].offset - entries[0].offset == 16


@pytest.mark.parametrize("table, match", [
    (struct.pack("<IHH", 4, 0x200, 2) + bytes(8), "dwLength"),
    (struct.pack("<IHH", 16, 0x100, 2) + bytes(8), "revision"),
    (builders.win_certificate(b"\x30\x00") + b"\x01" * 8, "dwLength|non-zero"),
])
def test_malformed_tables_are_format_errors(table, match):
    with pytest.raises(FormatError, match=match):
        authenticode.certificate_entries(_with_table(table))


def test_efi_guid_entries_carry_pkcs7():
    blob = authenticode.EFI_CERT_TYPE_PKCS7_GUID.bytes_le + b"\x30\x00"
    entry = authenticode.CertificateEntry(0, 8 + len(blob), 0x200, 0x0EF1, blob)
    assert entry.pkcs7 == b"\x30\x00"
    assert authenticode.CertificateEntry(0, 10, 0x200, 0x0001, b"x").pkcs7 is None


def test_signed_data_of_sbsign(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.signer)
    (entry,) = authenticode.certificate_entries(signed)
    sd = authenticode.parse_signed_data(entry.pkcs7)
    assert sd.data_type == authenticode.OID_SPC_PE_IMAGE_DATA
    assert sd.image_digest == authenticode.authentihash(signed)
    (signer,) = sd.signers
    assert signer.serial == pki.signer.cert.serial_number
    assert signer.message_digest == hashlib.sha256(sd.content).digest()


@pytest.mark.parametrize("data, match", [
    (b"\x30\x80\x00\x00", "indefinite"),
    (b"\x30\x81\x05" + bytes(5), "shortest"),
    (b"\x30\x05\x00", "runs past"),
    (b"\x1f\x01\x00", "high-tag"),
])
def test_der_is_strict(data, match):
    with pytest.raises(FormatError, match=match):
        der.read_one(data)


def test_der_oid():
    assert der.oid(der.read_one(bytes.fromhex("06092a864886f70d010702"))) == authenticode.OID_SIGNED_DATA


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_pkcs7_parser_raises_only_format_errors(blob):
    """Either a one-line FormatError of the authenticode layer, or SignedData whose content
    is Authenticode's SpcIndirectDataContent (the only content it accepts)."""
    try:
        signed = authenticode.parse_signed_data(blob)
    except FormatError as e:
        assert e.layer == authenticode.LAYER and str(e) and "\n" not in str(e)
    else:
        assert signed.content_type == authenticode.OID_SPC_INDIRECT_DATA


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 300))
def test_certificate_table_parser_raises_only_format_errors(table, declared):
    image = bytearray(_with_table(table))
    entry = authenticode.layout(builders.pe([(".text", b"\xcc" * 64)])).security_entry_offset
    struct.pack_into("<I", image, entry + 4, declared)
    try:
        where = authenticode.layout(bytes(image))
    except FormatError as e:  # the declared size does not fit: the directory entry is named
        assert e.layer == authenticode.LAYER and e.offset == entry
        return
    try:
        entries = authenticode.certificate_entries(bytes(image))
    except FormatError as e:  # it names a place inside the table
        assert e.layer == authenticode.LAYER and e.offset is not None
        assert where.cert_table_offset <= e.offset < where.cert_table_offset + where.cert_table_size
    else:  # WIN_CERTIFICATEs 8-byte aligned one after the other, each inside the table
        pos = where.cert_table_offset
        for cert in entries:
            assert cert.offset == pos and cert.revision == 0x0200 and cert.length > 8
            assert cert.offset + cert.length <= where.cert_table_offset + where.cert_table_size
            assert len(cert.content) == cert.length - 8
            pos += (cert.length + 7) & ~7

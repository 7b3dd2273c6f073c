"""EFI signature lists, --trust files in every format, and a fake efivarfs."""

from __future__ import annotations

import hashlib
import struct
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from pykexec.errors import FormatError
from pykexec.trust import TrustStore, esl, verify_image
from pykexec.trust.store import DB, DBX, SBAT_LEVEL, read_certificate_file

OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")
ATTRS = struct.pack("<I", 0x27)  # NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
MOK = "605dab50-e046-4300-abb6-3dd810dd8b23"


def test_esl_round_trip_and_guid_layout(pki):
    digest = hashlib.sha256(b"image").digest()
    data = esl.build([(esl.EFI_CERT_X509_GUID, pki.root.der), (esl.EFI_CERT_SHA256_GUID, digest)],
                     owner=OWNER)
    # EFI_GUID is mixed-endian: the first three fields little-endian
    assert data[:4] == bytes.fromhex("a159c0a5")
    entries = esl.parse(data)
    assert [(e.kind, e.owner, e.data) for e in entries] == [
        ("x509", OWNER, pki.root.der), ("sha256", OWNER, digest)]


def test_esl_with_several_hashes_in_one_list():
    hashes = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    size = 16 + 32
    data = struct.pack("<16sIII", esl.EFI_CERT_SHA256_GUID.bytes_le, 28 + 3 * size, 0, size)
    data += b"".join(OWNER.bytes_le + h for h in hashes)
    assert [e.data for e in esl.parse(data)] == hashes


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d[:20], "too few"),
    (lambda d: d[:16] + struct.pack("<I", 0x1000) + d[20:], "SignatureListSize"),
    (lambda d: d[:24] + struct.pack("<I", 47) + d[28:], "SignatureSize"),
])
def test_malformed_esl(mutate, match):
    good = esl.build([(esl.EFI_CERT_SHA256_GUID, bytes(32))])
    with pytest.raises(FormatError, match=match):
        esl.parse(mutate(good))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_esl_parser_raises_only_format_errors(data):
    """Either a FormatError at an offset inside the data, or entries that account for every
    byte: each EFI_SIGNATURE_LIST is its 28-byte header, SignatureHeaderSize and whole
    SignatureSize entries (UEFI 2.10 §32.4.1), so rebuilding them gives the same entries."""
    try:
        entries = esl.parse(data)
    except FormatError as e:
        assert e.offset is not None and 0 <= e.offset < max(len(data), 1)
    else:
        assert [(e.type, e.owner, e.data) for e in entries] == _walk_signature_lists(data)


def _walk_signature_lists(data: bytes) -> list:
    """EFI_SIGNATURE_LISTs walked as UEFI 2.10 §32.4.1 lays them out (SignatureType, then
    u32 SignatureListSize, SignatureHeaderSize, SignatureSize; the header; then entries of
    SignatureOwner and data), for a buffer already known to be well formed."""
    import struct
    import uuid
    out, pos = [], 0
    while pos < len(data):
        sig_type = uuid.UUID(bytes_le=data[pos:pos + 16])
        list_size, header_size, sig_size = struct.unpack_from("<III", data, pos + 16)
        at = pos + 28 + header_size
        while at < pos + list_size:
            out.append((sig_type, uuid.UUID(bytes_le=data[at:at + 16]), data[at + 16:at + sig_size]))
            at += sig_size
        pos += list_size
    return out


@pytest.mark.parametrize("form", ["pem", "der", "esl", "efivar"])
def test_trust_file_formats(pki, tmp_path, form):
    body = {"pem": pki.root.pem, "der": pki.root.der,
            "esl": esl.build([(esl.EFI_CERT_X509_GUID, pki.root.der)]),
            "efivar": ATTRS + esl.build([(esl.EFI_CERT_X509_GUID, pki.root.der)])}[form]
    path = tmp_path / f"trust.{form}"
    path.write_bytes(body)
    store = TrustStore.from_file(path)
    assert [a.certificate for a in store.anchors] == [pki.root.cert]
    assert store.anchors[0].source == str(path)


def test_pem_bundle_gives_every_certificate(pki, tmp_path):
    path = tmp_path / "bundle.pem"
    path.write_bytes(pki.root.pem + b"\n" + pki.intermediate.pem)
    assert len(TrustStore.from_file(path).anchors) == 2


def test_garbage_trust_file_is_a_format_error(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"hello world, not a certificate")
    with pytest.raises(FormatError, match="neither a PEM certificate"):
        TrustStore.from_file(path)


def test_revoke_file_fills_the_deny_list(pki, tmp_path):
    path = tmp_path / "dbx.esl"
    path.write_bytes(esl.build([(esl.EFI_CERT_X509_GUID, pki.signer.der),
                                (esl.EFI_CERT_SHA256_GUID, b"\x01" * 32)]))
    store = TrustStore.from_files(revoke=(path,))
    assert store.empty and [r.certificate for r in store.revoked_certificates] == [pki.signer.cert]
    assert ("sha256", b"\x01" * 32) in store.revoked_hashes


def fake_efivars(root, **variables):
    root.mkdir(exist_ok=True)
    for name, payload in variables.items():
        (root / name).write_bytes(ATTRS + payload)
    return root


def test_efivars_db_moklistrt_and_dbx(pki, sbsign, uki_bytes, tmp_path):
    signed = sbsign(uki_bytes, pki.signer)
    deep = sbsign(uki_bytes, pki.deep_signer, addcerts=(pki.intermediate,))
    root = fake_efivars(tmp_path / "efivars", **{
        DB: esl.build([(esl.EFI_CERT_X509_GUID, pki.rogue_root.der)]),
        f"MokListRT-{MOK}": esl.build([(esl.EFI_CERT_X509_GUID, pki.root.der)]),
        f"MokListRT1-{MOK}": esl.build([(esl.EFI_CERT_X509_GUID, pki.intermediate.der)]),
        DBX: esl.build([(esl.EFI_CERT_SHA256_GUID, hashlib.sha256(b"x").digest())]),
        SBAT_LEVEL: b"sbat,1,2024010900\nshim,4\ngrub,3\n",
    })
    store = TrustStore.from_efivars(root)
    assert {a.source for a in store.anchors} == {DB, f"MokListRT-{MOK}", f"MokListRT1-{MOK}"}
    assert len(store.revoked_hashes) == 1 and store.sbat_level == {"sbat": 1, "shim": 4, "grub": 3}
    assert verify_image(signed, store).verified
    assert verify_image(deep, store).signatures[0].anchor.source == f"MokListRT1-{MOK}"
    # the signer's image hash added to dbx: refused
    from pykexec.trust import authenticode
    fake_efivars(root, **{DBX: esl.build([(esl.EFI_CERT_SHA256_GUID,
                                           authenticode.authentihash(signed))])})
    assert not verify_image(signed, TrustStore.from_efivars(root)).verified
    # MokListXRT revokes too
    fake_efivars(root, **{DBX: b"", f"MokListXRT-{MOK}": esl.build([(esl.EFI_CERT_X509_GUID,
                                                                     pki.signer.der)])})
    assert "revoked" in verify_image(signed, TrustStore.from_efivars(root)).reason


def test_efivars_missing_unreadable_or_malformed_are_notes(tmp_path):
    assert TrustStore.from_efivars(tmp_path / "nowhere").notes[0].endswith("are not used")
    root = fake_efivars(tmp_path / "efivars", **{DB: b"\x00" * 10})
    (root / DBX).write_bytes(b"\x07")
    store = TrustStore.from_efivars(root)
    assert store.empty
    text = " ".join(store.notes)
    assert "too few" in text and "too short" in text and "MokListRT" in text


def test_load_merges_files_and_machine(pki, tmp_path):
    root = fake_efivars(tmp_path / "efivars", **{DB: esl.build([(esl.EFI_CERT_X509_GUID,
                                                                  pki.rogue_root.der)])})
    path = tmp_path / "root.pem"
    path.write_bytes(pki.root.pem)
    assert len(TrustStore.load((path,), efivars=root).anchors) == 2
    assert len(TrustStore.load((path,), efivars=None).anchors) == 1


def test_read_certificate_file_detects_esl_before_der(pki):
    data = esl.build([(esl.EFI_CERT_SHA256_GUID, bytes(32))])
    assert read_certificate_file(data, source="x")[0].kind == "sha256"

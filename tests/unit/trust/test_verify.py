"""Authenticode verification of synthetic images signed with sbsign and throwaway keys."""

from __future__ import annotations

import hashlib

import pytest

from pykexec.trust import TrustStore, TrustedCertificate, verify_image
from pykexec.trust import authenticode, esl
from tests import builders
from tests.unit.trust.conftest import flip_in_section


def trusting(*identities, revoked=(), revoked_hashes=(), allowed_hashes=()) -> TrustStore:
    return TrustStore(
        anchors=tuple(TrustedCertificate(i.cert, f"test:{i.name}") for i in identities),
        revoked_certificates=tuple(TrustedCertificate(i.cert, f"dbx:{i.name}") for i in revoked),
        revoked_hashes=frozenset(("sha256", h) for h in revoked_hashes),
        allowed_hashes=frozenset(("sha256", h) for h in allowed_hashes))


def test_signed_and_trusted_verifies(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.signer)
    v = verify_image(signed, trusting(pki.root), what="uki")
    assert v.verified, v.reason
    (sig,) = v.signatures
    assert sig.digest_matches and sig.trusted and sig.digest_algorithm == "sha256"
    assert sig.signer.subject == "CN=Test Signer"
    assert [c.subject for c in sig.chain] == ["CN=Test Signer", "CN=Test Root CA"]
    assert sig.anchor.source == "test:Test Root CA"
    assert "chains to CN=Test Root CA" in v.reason


def test_untrusted_key_is_refused(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.rogue_signer)
    v = verify_image(signed, trusting(pki.root))
    assert not v.verified
    assert v.signatures[0].digest_matches
    assert "no trusted certificate issued CN=Rogue Signer" in v.reason


def test_one_byte_of_cmdline_changed_is_refused(pki, sbsign, uki_bytes):
    tampered = flip_in_section(sbsign(uki_bytes, pki.signer), ".cmdline")
    v = verify_image(tampered, trusting(pki.root))
    assert not v.verified
    assert not v.signatures[0].digest_matches
    assert "changed after signing" in v.reason


@pytest.mark.parametrize("who", ["signer", "root"])
def test_certificate_in_dbx_is_refused(pki, sbsign, uki_bytes, who):
    signed = sbsign(uki_bytes, pki.signer)
    v = verify_image(signed, trusting(pki.root, revoked=[getattr(pki, who)]))
    assert not v.verified
    assert v.signatures[0].revoked
    assert "is revoked (dbx:" in v.reason


def test_certificate_tbs_hash_in_dbx_is_refused(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.signer)
    tbs = hashlib.sha256(pki.signer.cert.tbs_certificate_bytes).digest()
    store = TrustStore.from_entries(
        (esl.SignatureEntry(esl.EFI_CERT_X509_SHA256_GUID, esl.uuid.UUID(int=0), tbs + bytes(16)),),
        source="dbx", revoke=True).merged(trusting(pki.root))
    v = verify_image(signed, store)
    assert not v.verified and "TBS hash" in v.reason


def test_image_hash_in_dbx_is_refused(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.signer)
    v = verify_image(signed, trusting(pki.root, revoked_hashes=[authenticode.authentihash(signed)]))
    assert not v.verified and "revoked (dbx)" in v.reason


def test_image_hash_in_db_allows_an_unsigned_image(uki_bytes):
    v = verify_image(uki_bytes, trusting(allowed_hashes=[authenticode.authentihash(uki_bytes)]))
    assert v.verified and "allowed (db)" in v.reason


def test_unsigned_image_is_refused(pki, uki_bytes):
    v = verify_image(uki_bytes, trusting(pki.root))
    assert not v.verified and "not signed" in v.reason


def test_no_anchors_says_so(pki, sbsign, uki_bytes):
    v = verify_image(sbsign(uki_bytes, pki.signer), TrustStore())
    assert not v.verified and "no trust anchors" in v.reason


def test_chain_through_an_embedded_intermediate(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.deep_signer, addcerts=(pki.intermediate,))
    v = verify_image(signed, trusting(pki.root))
    assert v.verified, v.reason
    assert [c.subject for c in v.signatures[0].chain] == [
        "CN=Deep Signer", "CN=Test Intermediate CA", "CN=Test Root CA"]


def test_missing_intermediate_has_no_chain(pki, sbsign, uki_bytes):
    v = verify_image(sbsign(uki_bytes, pki.deep_signer), trusting(pki.root))
    assert not v.verified and "CN=Deep Signer" in v.reason


def test_partial_chain_an_intermediate_or_the_leaf_may_be_the_anchor(pki, sbsign, uki_bytes):
    deep = sbsign(uki_bytes, pki.deep_signer, addcerts=(pki.intermediate,))
    assert verify_image(deep, trusting(pki.intermediate)).verified
    assert verify_image(deep, trusting(pki.deep_signer)).verified


def test_validity_dates_are_not_checked_as_in_firmware(pki, sbsign, uki_bytes):
    assert verify_image(sbsign(uki_bytes, pki.expired_signer), trusting(pki.root)).verified


def test_an_issuer_that_is_not_a_ca_breaks_the_chain(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.under_not_a_ca, addcerts=(pki.not_a_ca,))
    v = verify_image(signed, trusting(pki.root))
    assert not v.verified
    assert "Not A CA is not a CA" in v.reason


def test_two_signatures_one_trusted_is_enough(pki, sbsign, uki_bytes):
    twice = sbsign(sbsign(uki_bytes, pki.rogue_signer), pki.signer)
    assert len(authenticode.certificate_entries(twice)) == 2
    v = verify_image(twice, trusting(pki.root))
    assert v.verified and v.reason.startswith("signature 2 ")
    assert [s.trusted for s in v.signatures] == [False, True]


def test_two_signatures_either_in_dbx_refuses(pki, sbsign, uki_bytes):
    twice = sbsign(sbsign(uki_bytes, pki.rogue_signer), pki.signer)
    v = verify_image(twice, trusting(pki.root, revoked=[pki.rogue_signer]))
    assert not v.verified and v.reason.startswith("signature 1: ")


def test_zero_padding_after_the_certificate_table_is_ignored(pki, sbsign, uki_bytes):
    padded = sbsign(uki_bytes, pki.signer) + bytes(4096)
    v = verify_image(padded, trusting(pki.root))
    assert v.verified, v.reason
    assert any("4096 zero bytes" in n for n in v.notes)


def test_data_appended_after_the_certificate_table_is_refused(pki, sbsign, uki_bytes):
    appended = sbsign(uki_bytes, pki.signer) + b"evil" + bytes(12)
    v = verify_image(appended, trusting(pki.root))
    assert not v.verified and not v.signatures[0].digest_matches
    assert any("not signed" in n for n in v.notes)


def test_checksum_field_is_not_covered(pki, sbsign, uki_bytes):
    signed = bytearray(sbsign(uki_bytes, pki.signer))
    checksum = authenticode.layout(bytes(signed)).checksum_offset
    signed[checksum:checksum + 4] = b"\x12\x34\x56\x78"
    assert verify_image(bytes(signed), trusting(pki.root)).verified


@pytest.mark.parametrize("kind", ["addon", "zboot", "arm64_image", "pe"])
def test_other_signed_pe_formats(pki, sbsign, kind):
    image = {"addon": lambda: builders.addon(cmdline="quiet"), "zboot": builders.zboot,
             "arm64_image": builders.arm64_image,
             "pe": lambda: builders.pe([(".text", b"\x90" * 300)])}[kind]()
    signed = sbsign(image, pki.signer)
    assert verify_image(signed, trusting(pki.root)).verified
    assert not verify_image(flip_in_section(signed, ".text" if kind != "addon" else ".cmdline"),
                            trusting(pki.root)).verified


def test_not_a_pe_is_refused_with_a_reason():
    v = verify_image(b"\x7fELF" + bytes(200), TrustStore())
    assert not v.verified and "not a PE image" in v.reason


def test_malformed_signature_blob_is_a_problem_not_a_crash(pki, uki_bytes):
    image = builders.uki(signed=True)  # WIN_CERTIFICATE around a fake blob
    v = verify_image(image, trusting(pki.root))
    assert not v.verified and "does not parse" in v.reason


def test_sbat_is_reported(pki, sbsign, sbat_pe):
    v = verify_image(sbsign(sbat_pe, pki.signer), trusting(pki.root))
    assert v.verified
    assert [(e.component, e.generation) for e in v.sbat] == [("sbat", 1), ("systemd-stub", 1)]


def test_sbat_below_the_machine_level_is_refused(pki, sbsign, sbat_pe):
    signed = sbsign(sbat_pe, pki.signer)
    store = TrustStore(anchors=trusting(pki.root).anchors, sbat_level={"sbat": 1, "systemd-stub": 2})
    v = verify_image(signed, store)
    assert not v.verified and "requires 2" in v.reason


def test_verdict_json_round_trips(pki, sbsign, sbat_pe):
    import json
    v = verify_image(sbsign(sbat_pe, pki.signer), trusting(pki.root))
    doc = json.loads(json.dumps(v.to_json()))
    assert doc["verified"] and doc["sbat"][1]["component"] == "systemd-stub"
    assert doc["signatures"][0]["signer"]["not_after"]

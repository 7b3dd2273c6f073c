"""Every input ends in a Verdict (or the project's own errors): mutated signed images."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pykexec.errors import PykexecError
from pykexec.trust import TrustStore, TrustedCertificate, authenticode, verify_image


class Case(tuple):
    """(signed image, trust store), with a short repr for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<signed image of {len(self[0])} bytes, trust store>"


@pytest.fixture(scope="module")
def signed_and_trust(pki, sbsign, uki_bytes):
    signed = sbsign(uki_bytes, pki.deep_signer, addcerts=(pki.intermediate,))
    return Case((signed, TrustStore(anchors=(TrustedCertificate(pki.root.cert, "test"),))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutations_in_the_certificate_table_give_a_verdict(signed_and_trust, data):
    signed, trust = signed_and_trust
    where = authenticode.layout(signed)
    out = bytearray(signed)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(where.cert_table_offset, len(signed) - 1))
        out[pos] = data.draw(st.integers(0, 255))
    try:
        v = verify_image(bytes(out), trust)
    except PykexecError as e:
        assert bytes(out) != signed and str(e)
        return
    if bytes(out) == signed:
        assert v.verified, v.reason
    if v.verified:  # only a byte outside what the signature needs (e.g. an unused field)
        assert v.signatures and any(s.trusted for s in v.signatures)
    else:
        assert v.reason


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutations_in_the_headers_give_a_verdict(signed_and_trust, data):
    signed, trust = signed_and_trust
    out = bytearray(signed)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, 0x400))
        out[pos] = data.draw(st.integers(0, 255))
    changed = {i for i in range(len(signed)) if out[i] != signed[i]}
    where = authenticode.layout(signed)
    # the Authenticode hash skips CheckSum and the certificate table's data directory entry
    excluded = set(range(where.checksum_offset, where.checksum_offset + 4)) | set(
        range(where.security_entry_offset, where.security_entry_offset + 8))
    try:
        v = verify_image(bytes(out), trust)
    except PykexecError as e:
        assert changed and str(e), "the unchanged image verifies"
        return
    if not changed:
        assert v.verified, v.reason
    if v.verified:  # a change the signature covers must break it
        assert changed <= excluded, sorted(changed - excluded)
    else:
        assert v.reason


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000))
def test_truncated_images_give_a_verdict(signed_and_trust, cut):
    signed, trust = signed_and_trust
    assert not verify_image(signed[:len(signed) - 1 - cut], trust).verified


def test_deep_nesting_is_refused_without_recursion():
    """A SignedData of 5000 nested SEQUENCEs (five times Python's recursion limit): the reader goes one level at a time and the
    parser expects a fixed shape, so it refuses the input at the first level (no depth limit,
    no RecursionError)."""
    blob = b"\x05\x00"
    for _ in range(5000):
        length = len(blob)
        head = bytes([0x80 | 4]) + length.to_bytes(4, "big") if length >= 0x80 else bytes([length])
        blob = b"\x30" + head + blob
    with pytest.raises(PykexecError):
        authenticode.parse_signed_data(blob)


# -- structured DER: the shape of a PKCS #7 SignedData, with any subtree replaced ------------------

def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
SPC_INDIRECT_OID = bytes.fromhex("060a2b060104018237020104")
SHA256_ALG = _tlv(0x30, bytes.fromhex("0609608648016503040201") + b"\x05\x00")
LEAF_TAGS = st.sampled_from([0x02, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x80, 0x81])
CONSTRUCTED_TAGS = st.sampled_from([0x30, 0x31, 0xA0, 0xA1])
#: any DER tree: leaves of common primitive tags, nested in SEQUENCE, SET and context tags
ANY_DER = st.recursive(
    st.builds(_tlv, LEAF_TAGS, st.binary(max_size=12)),
    lambda kids: st.builds(lambda tag, parts: _tlv(tag, b"".join(parts)), CONSTRUCTED_TAGS,
                           st.lists(kids, max_size=4)),
    max_leaves=12)


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


@st.composite
def signed_data(draw) -> bytes:
    """A ContentInfo shaped like Authenticode's, each field either right or any DER tree."""
    def part(good: bytes) -> bytes:
        return draw(st.one_of(st.just(good), ANY_DER))
    spc = _seq(part(_seq(part(bytes.fromhex("060a2b06010401823702010f")))),
               part(_seq(SHA256_ALG, _tlv(0x04, bytes(32)))))
    encap = part(_seq(part(SPC_INDIRECT_OID), part(_tlv(0xA0, spc))))
    signer = part(_seq(_tlv(0x02, b"\x01"), part(_seq(_seq(), _tlv(0x02, b"\x05"))), part(SHA256_ALG),
                       part(_tlv(0xA0, part(_seq(part(bytes.fromhex("06092a864886f70d010904")),
                                                 _tlv(0x31, part(_tlv(0x04, bytes(32)))))))),
                       part(SHA256_ALG), part(_tlv(0x04, b"sig"))))
    sd = _seq(_tlv(0x02, b"\x01"), part(_tlv(0x31, SHA256_ALG)), encap,
              *draw(st.lists(ANY_DER, max_size=2)), part(_tlv(0x31, signer)))
    return _seq(part(SIGNED_DATA_OID), part(_tlv(0xA0, sd)))


@settings(max_examples=400, deadline=None)
@given(blob=signed_data())
def test_any_signed_data_shape_parses_or_is_a_format_error(blob):
    """The crash a random-bytes fuzzer never reached (an empty contentInfo: IndexError) and its
    kind: every structured input is parsed or refused with the project's own error."""
    try:
        parsed = authenticode.parse_signed_data(blob)
    except PykexecError as e:
        assert str(e)
        return
    assert parsed.signers and parsed.content_type


def test_an_empty_content_info_is_a_format_error():
    sd = _seq(_tlv(0x02, b"\x01"), _tlv(0x31, SHA256_ALG), _seq(), _tlv(0x31, b""))
    with pytest.raises(PykexecError, match="contentInfo is empty"):
        authenticode.parse_signed_data(_seq(SIGNED_DATA_OID, _tlv(0xA0, sd)))

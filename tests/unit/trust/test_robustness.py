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

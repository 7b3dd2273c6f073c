"""Fixtures of the trust tests: a throwaway PKI, sbsign, and small images to sign."""

from __future__ import annotations

import datetime

import pytest

from tests import builders
from tests.unit.trust.pki import NOW, Identity, Pki, make_identity, sbsign_file


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    root = make_identity(d, "Test Root CA", ca=True)
    intermediate = make_identity(d, "Test Intermediate CA", issuer=root, ca=True)
    rogue_root = make_identity(d, "Rogue Root CA", ca=True)
    not_a_ca = make_identity(d, "Not A CA", issuer=root)
    return Pki(
        root=root, intermediate=intermediate,
        signer=make_identity(d, "Test Signer", issuer=root),
        deep_signer=make_identity(d, "Deep Signer", issuer=intermediate),
        rogue_root=rogue_root,
        rogue_signer=make_identity(d, "Rogue Signer", issuer=rogue_root),
        not_a_ca=not_a_ca,
        under_not_a_ca=make_identity(d, "Under Not A CA", issuer=not_a_ca),
        expired_signer=make_identity(d, "Expired Signer", issuer=root,
                                     not_before=NOW - datetime.timedelta(days=4000),
                                     not_after=NOW - datetime.timedelta(days=3000)),
        directory=d)


@pytest.fixture(scope="session")
def sbsign(tmp_path_factory):
    """``sbsign(data, identity, addcerts=())`` → the signed bytes (another signature is
    appended when ``data`` is already signed)."""
    work = tmp_path_factory.mktemp("sbsign")
    counter = iter(range(1 << 30))

    def sign(data: bytes, who: Identity, addcerts: tuple[Identity, ...] = ()) -> bytes:
        n = next(counter)
        src, out, extra = work / f"in{n}.efi", work / f"out{n}.efi", None
        src.write_bytes(data)
        if addcerts:
            extra = work / f"add{n}.pem"
            extra.write_bytes(b"".join(a.pem for a in addcerts))
        sbsign_file(src, out, who, extra)
        return out.read_bytes()

    return sign


SBAT_CSV = (b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n"
            b"systemd-stub,1,The systemd Developers,systemd,258,https://systemd.io/\n")


@pytest.fixture(scope="session")
def uki_bytes() -> bytes:
    """An unsigned synthetic UKI (tests/builders.py): stub sections, .cmdline, .linux, ..."""
    return builders.uki(cmdline="console=ttyS0 pykexec-marker=1")


@pytest.fixture(scope="session")
def sbat_pe() -> bytes:
    """A small PE with a two-line .sbat section."""
    return builders.pe([(".text", b"\xcc" * 64), (".sbat", SBAT_CSV)])


def flip_in_section(data: bytes, name: str, delta: int = 1) -> bytes:
    """``data`` with the first byte of section ``name`` changed."""
    from pykexec.formats import pe
    section = next(s for s in pe.read_header(data).sections if s.name == name)
    out = bytearray(data)
    out[section.pointer_to_raw_data] ^= delta
    return bytes(out)

"""Authenticode verification of real images: Debian's signed kernel and shim, and a UKI
built by ukify and signed by sbsign with a throwaway key.

Material comes from tests/material.py (kernel, systemd stub, ukify) and from
Debian's shim packages, fetched here with ``apt-get download`` and cached under
the material cache:

* ``shim-unsigned`` ships Debian's Secure Boot CA as
  ``/usr/share/shim/debian-uefi-ca.der``: the certificate shim embeds and mirrors
  into ``MokListRT``, and the one Debian's kernel signatures chain to;
* ``shim-signed`` ships ``shimx64.efi.signed``, signed by Microsoft twice
  (UEFI CA 2011 and UEFI CA 2023): two WIN_CERTIFICATE entries, made by signtool.

``sbverify`` (sbsigntool) is the independent judge for the ukify UKI.  Like the
rest of the real tests, these fail rather than skip when material is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pykexec import cli
from pykexec.errors import SignatureRejected
from pykexec.formats import pe
from pykexec.trust import TrustStore, authenticode, check_load, esl, verify_image
from pykexec.trust.store import DBX
from tests import material
from tests.unit.trust.pki import make_identity, sbsign_file

pytestmark = pytest.mark.real

DEBIAN_SIGNER = "CN=Debian Secure Boot Signer 2022 - linux"
DEBIAN_CA = "CN=Debian Secure Boot CA"
MOK_LIST_RT = "MokListRT-605dab50-e046-4300-abb6-3dd810dd8b23"
ATTRS = b"\x06\x00\x00\x00"


def _debian_file(package: str, member: str) -> Path:
    """``member`` of the system suite's ``package``, downloaded once and cached."""
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                          capture_output=True, text=True)
    version = next((line.split(":", 1)[1].strip() for line in show.stdout.splitlines()
                    if line.startswith("Version:")), None)
    if version is None:
        raise RuntimeError(f"test material unavailable: apt-cache knows no {package} "
                           "(is `apt-get update` needed?)")
    final = material.cache_root() / "trust" / f"{package}_{version.replace(':', '%3a')}" / member
    if final.is_file():
        return final
    with tempfile.TemporaryDirectory(dir=material.cache_root()) as tmp:
        opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        subprocess.run(["apt-get", *opts, "-q", "download", f"{package}={version}"], cwd=tmp,
                       check=True, capture_output=True)
        (deb,) = Path(tmp).glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "x" / member, final)
    return final


@pytest.fixture(scope="module")
def debian_ca() -> Path:
    return _debian_file("shim-unsigned", "usr/share/shim/debian-uefi-ca.der")


@pytest.fixture(scope="module")
def signed_kernel() -> bytes:
    return material.bookworm_signed_bzimage().read_bytes()


def test_debian_kernel_verifies_against_debian_ca(signed_kernel, debian_ca):
    v = verify_image(signed_kernel, TrustStore.from_files((debian_ca,)), what="vmlinuz")
    assert v.verified, v.reason
    (sig,) = v.signatures
    assert sig.digest_matches and sig.digest_algorithm == "sha256"
    assert [c.subject for c in sig.chain] == [DEBIAN_SIGNER, DEBIAN_CA]
    assert sig.anchor.source == str(debian_ca)


def test_debian_kernel_verifies_through_a_moklistrt_like_a_secure_boot_debian(
        signed_kernel, debian_ca, tmp_path):
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    (efivars / MOK_LIST_RT).write_bytes(
        ATTRS + esl.build([(esl.EFI_CERT_X509_GUID, debian_ca.read_bytes())]))
    v = verify_image(signed_kernel, TrustStore.from_efivars(efivars))
    assert v.verified and v.signatures[0].anchor.source == MOK_LIST_RT
    (efivars / DBX).write_bytes(ATTRS + esl.build([(esl.EFI_CERT_X509_GUID,
                                                    debian_ca.read_bytes())]))
    v = verify_image(signed_kernel, TrustStore.from_efivars(efivars))
    assert not v.verified and f"{DEBIAN_CA} is revoked ({DBX})" in v.reason


def test_debian_kernel_without_the_ca_says_where_the_chain_stops(signed_kernel, tmp_path):
    other = make_identity(tmp_path, "Unrelated CA", ca=True)
    v = verify_image(signed_kernel, TrustStore.from_files((other.cert_path,)))
    assert not v.verified and v.signatures[0].digest_matches
    assert f"no trusted certificate issued {DEBIAN_SIGNER} (issuer {DEBIAN_CA})" in v.reason


def test_debian_kernel_hash_in_dbx(signed_kernel, debian_ca):
    digest = authenticode.authentihash(signed_kernel)
    store = TrustStore.from_files((debian_ca,)).merged(
        TrustStore(revoked_hashes=frozenset({("sha256", digest)})))
    assert "hash is revoked" in verify_image(signed_kernel, store).reason


def test_microsoft_signed_shim_has_two_signatures_whose_digests_match():
    shim = _debian_file("shim-signed", "usr/lib/shim/shimx64.efi.signed").read_bytes()
    v = verify_image(shim, TrustStore())
    assert len(v.signatures) == 2
    assert all(s.digest_matches for s in v.signatures)
    issuers = [s.signer.issuer for s in v.signatures]
    assert "Microsoft Corporation UEFI CA 2011" in issuers[0]
    assert "Microsoft UEFI CA 2023" in issuers[1]
    assert not v.verified


# ---------------------------------------------------------------- a ukify UKI, sbsign'd


@pytest.fixture(scope="module")
def uki_material(tmp_path_factory):
    d = tmp_path_factory.mktemp("uki")
    key = make_identity(d, "pykexec throwaway UKI key")
    uki = material.build_uki(d / "unsigned.efi", linux=material.bookworm_signed_bzimage(),
                             stub=material.systemd_stub("sid", "x64", "linux"),
                             cmdline="console=ttyS0 pykexec-trust-marker=1", uname="6.1.0-test")
    signed = d / "signed.efi"
    sbsign_file(uki, signed, key)
    tampered = d / "tampered.efi"
    data = bytearray(signed.read_bytes())
    cmdline = next(s for s in pe.read_header(bytes(data)).sections if s.name == ".cmdline")
    data[cmdline.pointer_to_raw_data] ^= 0x20
    tampered.write_bytes(bytes(data))
    return {"key": key, "unsigned": uki, "signed": signed, "tampered": tampered, "dir": d}


def sbverify_ok(path: Path, cert: Path) -> bool:
    return subprocess.run(["sbverify", "--cert", str(cert), str(path)],
                          capture_output=True).returncode == 0


def test_ukify_uki_signed_with_sbsign_verifies_with_trust(uki_material):
    key = uki_material["key"]
    v = verify_image(uki_material["signed"].read_bytes(), TrustStore.from_files((key.cert_path,)))
    assert v.verified, v.reason
    assert v.sbat and v.sbat[0].component == "sbat"
    assert any(e.component == "systemd-stub" for e in v.sbat)
    assert sbverify_ok(uki_material["signed"], key.cert_path)


def test_ukify_uki_with_one_cmdline_byte_changed_is_refused(uki_material):
    key = uki_material["key"]
    trust = TrustStore.from_files((key.cert_path,))
    v = verify_image(uki_material["tampered"].read_bytes(), trust)
    assert not v.verified and not v.signatures[0].digest_matches
    assert not sbverify_ok(uki_material["tampered"], key.cert_path)
    with pytest.raises(SignatureRejected, match="changed after signing"):
        check_load(uki_material["tampered"].read_bytes(), image_name="tampered.efi",
                   require=True, trust=trust)


def test_unsigned_ukify_uki_is_refused_under_the_policy(uki_material):
    trust = TrustStore.from_files((uki_material["key"].cert_path,))
    with pytest.raises(SignatureRejected, match="not signed"):
        check_load(uki_material["unsigned"].read_bytes(), image_name="unsigned.efi",
                   require=True, trust=trust)


def test_signed_addon_from_ukify(uki_material):
    d, key = uki_material["dir"], uki_material["key"]
    addon = material.build_addon(d / "extra.addon.efi", stub=material.systemd_stub("sid", "x64", "addon"),
                                 cmdline="pykexec-addon=1")
    signed = d / "extra-signed.addon.efi"
    sbsign_file(addon, signed, key)
    trust = TrustStore.from_files((key.cert_path,))
    out = check_load(uki_material["signed"].read_bytes(), image_name="signed.efi", require=True,
                     trust=trust, addons=[("extra.addon.efi", signed.read_bytes())])
    assert all(v.verified for v in out.verdicts) and len(out.verdicts) == 2
    with pytest.raises(SignatureRejected, match="add-on extra.addon.efi"):
        check_load(uki_material["signed"].read_bytes(), image_name="signed.efi", require=True,
                   trust=trust, addons=[("extra.addon.efi", addon.read_bytes())])


def test_verify_command_on_the_real_uki(uki_material, capsys):
    cert = str(uki_material["key"].cert_path)
    assert cli.main(["verify", str(uki_material["signed"]), "--trust", cert,
                     "--no-machine-keys", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert cli.main(["verify", str(uki_material["tampered"]), "--trust", cert,
                     "--no-machine-keys"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pykexec: error: ") and err.count("\n") == 1


def test_shims_long_section_names_are_resolved_as_objdump_resolves_them():
    """GNU ld names sections longer than 8 bytes "/N" (an offset into the COFF string table);
    Debian's shim has four.  objdump (binutils) is the oracle."""
    path = _debian_file("shim-signed", "usr/lib/shim/shimx64.efi.signed")
    out = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    want = [line.split()[1] for line in out.splitlines() if line[:4].strip().isdigit()]
    raw = [bytes(path.read_bytes()[at:at + 8]).rstrip(b"\0").decode()
           for at in _section_name_offsets(path.read_bytes())]
    assert any(n.startswith("/") for n in raw), raw            # the material is what we think
    got = sorted(pe.read_header(path.read_bytes()).sections, key=lambda s: s.virtual_address)
    assert [s.name for s in got] == want


def _section_name_offsets(data: bytes) -> list[int]:
    lfanew = int.from_bytes(data[0x3C:0x40], "little")
    count = int.from_bytes(data[lfanew + 6:lfanew + 8], "little")
    table = lfanew + 0x18 + int.from_bytes(data[lfanew + 0x14:lfanew + 0x16], "little")
    return [table + 40 * i for i in range(count)]

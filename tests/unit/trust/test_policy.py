"""The load policy: when a signature is required, and what it covers."""

from __future__ import annotations

import os
import stat
import struct

import pytest

from pykexec.errors import PykexecError, SignatureRejected
from pykexec.trust import (TrustStore, TrustedCertificate, check_load, default_required,
                           read_secure_boot, require_signature, writable_warning)
from pykexec.trust.policy import SECURE_BOOT
from tests import builders
from tests.unit.trust.conftest import flip_in_section


@pytest.mark.parametrize("lockdown, secure_boot, expected", [
    (None, None, False), ("none", False, False), ("none", None, False),
    ("integrity", False, True), ("confidentiality", None, True),
    (None, True, True), ("none", True, True),
])
def test_default_required(lockdown, secure_boot, expected):
    assert default_required(lockdown, secure_boot) is expected


def efivars_with_secure_boot(tmp_path, value):
    root = tmp_path / "efivars"
    root.mkdir()
    if value is not None:
        (root / SECURE_BOOT).write_bytes(struct.pack("<I", 6) + bytes([value]))
    return root


@pytest.mark.parametrize("value, expected", [(1, True), (0, False), (None, False)])
def test_read_secure_boot(tmp_path, value, expected):
    assert read_secure_boot(efivars_with_secure_boot(tmp_path, value)) is expected


def test_read_secure_boot_without_efivarfs_is_unknown(tmp_path):
    assert read_secure_boot(tmp_path / "none") is None


def test_require_signature_raises_a_clear_error(pki, sbsign, uki_bytes):
    trust = TrustStore(anchors=(TrustedCertificate(pki.root.cert, "--trust root.pem"),))
    assert require_signature(sbsign(uki_bytes, pki.signer), trust=trust, what="a.efi").verified
    with pytest.raises(SignatureRejected) as e:
        require_signature(sbsign(uki_bytes, pki.rogue_signer), trust=trust, what="a.efi")
    assert e.value.exit_code == 2 and isinstance(e.value, PykexecError)
    assert str(e.value).startswith("a.efi: signature check failed: signature 1: no trusted")
    assert "--trust" in str(e.value) and e.value.verdict is not None


def fake_stat(mode: int, gid: int, uid: int = 1000) -> os.stat_result:
    st = os.stat(__file__)
    return os.stat_result((stat.S_IFREG | mode, st.st_ino, st.st_dev, 1, uid, gid, *st[6:]))


@pytest.mark.parametrize("mode, gid, warned", [
    (0o644, 1000, False), (0o600, 1000, False), (0o664, 1000, True), (0o664, 0, False),
    (0o646, 0, True), (0o666, 1000, True),
])
def test_writable_warning(mode, gid, warned):
    assert (writable_warning(fake_stat(mode, gid), what="image") is not None) is warned


def test_writable_warning_text_and_path(tmp_path):
    assert writable_warning(fake_stat(0o664, 1000), what="initrd").startswith(
        "initrd is writable by group 1000 (mode 0664, owner uid 1000)")
    f = tmp_path / "img"
    f.write_bytes(b"x")
    f.chmod(0o666)
    assert writable_warning(f).startswith(f"{f} is writable by anyone (mode 0666")


def trust_of(pki):
    return TrustStore(anchors=(TrustedCertificate(pki.root.cert, "test"),))


def test_check_load_not_required_does_not_verify(uki_bytes, tmp_path):
    out = check_load(uki_bytes, image_name="u.efi", lockdown=None,
                     efivars=efivars_with_secure_boot(tmp_path, 0))
    assert not out.required and out.verdicts == () and "neither" in out.why


def test_check_load_default_on_under_secure_boot(pki, sbsign, uki_bytes, tmp_path):
    efivars = efivars_with_secure_boot(tmp_path, 1)
    with pytest.raises(SignatureRejected, match="no trust anchors"):
        check_load(uki_bytes, image_name="u.efi", efivars=efivars)
    out = check_load(sbsign(uki_bytes, pki.signer), image_name="u.efi", efivars=efivars,
                     trust=trust_of(pki))
    assert out.required and out.why == "UEFI Secure Boot is enabled" and out.verdicts[0].verified


def test_check_load_default_on_under_lockdown_with_trust_files(pki, sbsign, uki_bytes, tmp_path):
    out = check_load(sbsign(uki_bytes, pki.signer), image_name="u.efi", lockdown="integrity",
                     trust_files=(pki.root.cert_path,), efivars=tmp_path / "none")
    assert out.required and "lockdown is 'integrity'" in out.why


def test_check_load_refuses_a_changed_cmdline(pki, sbsign, uki_bytes, tmp_path):
    tampered = flip_in_section(sbsign(uki_bytes, pki.signer), ".cmdline")
    with pytest.raises(SignatureRejected, match="changed after signing"):
        check_load(tampered, image_name="u.efi", require=True, trust=trust_of(pki))


def test_check_load_verifies_addons(pki, sbsign, uki_bytes):
    image = sbsign(uki_bytes, pki.signer)
    good = sbsign(builders.addon(cmdline="quiet"), pki.signer)
    out = check_load(image, image_name="u.efi", require=True, trust=trust_of(pki),
                     addons=[("a.addon.efi", good)])
    assert [v.what for v in out.verdicts] == ["u.efi", "add-on a.addon.efi"]
    with pytest.raises(SignatureRejected, match="add-on b.addon.efi: .*not signed"):
        check_load(image, image_name="u.efi", require=True, trust=trust_of(pki),
                   addons=[("a.addon.efi", good), ("b.addon.efi", builders.addon())])


def test_check_load_refuses_to_override_a_signed_cmdline(pki, sbsign, uki_bytes):
    image = sbsign(uki_bytes, pki.signer)
    with pytest.raises(SignatureRejected, match="signed .cmdline"):
        check_load(image, image_name="u.efi", require=True, trust=trust_of(pki),
                   cmdline_override=True)
    out = check_load(image, image_name="u.efi", require=False, cmdline_override=True)
    assert not out.required


def test_check_load_plain_kernel_notes_unsigned_initrds(pki, sbsign, tmp_path):
    kernel = sbsign(builders.pe([(".text", b"\x90" * 64)]), pki.signer)
    out = check_load(kernel, image_name="vmlinuz", require=True, trust=trust_of(pki),
                     initrds=["initrd.img"], cmdline_override=True)
    assert out.notes == ("the command line is not covered by any signature",
                         "initrd initrd.img is not covered by any signature")


def test_check_load_warns_about_writable_files(tmp_path, caplog):
    f = tmp_path / "initrd"
    f.write_bytes(b"x")
    f.chmod(0o666)
    out = check_load(b"not a pe", image_name="k", require=False,
                     files=[("initrd", os.stat(f))])
    assert len(out.warnings) == 1 and "initrd is writable by anyone" in caplog.text


def test_non_pe_image_is_refused_under_the_policy(pki):
    with pytest.raises(SignatureRejected, match="not a PE image"):
        check_load(builders.elf64(), image_name="vmlinux", require=True, trust=trust_of(pki))

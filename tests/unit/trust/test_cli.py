"""`pykexec verify`, wired into pykexec.cli's tables as the lead will wire it."""

from __future__ import annotations

import json

import pytest

from pykexec import cli
from pykexec.cli import verify as trust_cli
from tests.unit.trust.conftest import flip_in_section


@pytest.fixture
def run(capsys):
    def go(*argv):
        code = cli.main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err
    return go


@pytest.fixture
def signed(pki, sbsign, sbat_pe, tmp_path):
    path = tmp_path / "signed.efi"
    path.write_bytes(sbsign(sbat_pe, pki.signer))
    return path


def test_verified_exits_0_with_a_report(run, signed, pki, tmp_path):
    code, out, err = run("verify", signed, "--trust", pki.root.cert_path, "--efivars",
                         tmp_path / "none")
    assert code == 0 and err == ""
    assert "signer: CN=Test Signer (issuer CN=Test Root CA" in out
    assert "chain: CN=Test Signer -> CN=Test Root CA  [trusted: " in out
    assert "systemd-stub,1,The systemd Developers" in out
    assert out.rstrip().splitlines()[-1].startswith("  verdict: verified: signature 1 by")


def test_not_verified_exits_2_with_one_error_line(run, signed, pki):
    code, out, err = run("verify", signed, "--trust", pki.rogue_root.cert_path,
                         "--no-machine-keys")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pykexec: error: ")
    assert "NOT verified" in out


def test_json_prints_the_report_and_exits_2_without_an_error_line(run, pki, sbsign, sbat_pe,
                                                                  tmp_path):
    path = tmp_path / "t.efi"
    path.write_bytes(flip_in_section(sbsign(sbat_pe, pki.signer), ".sbat"))
    code, out, err = run("verify", path, "--trust", pki.root.cert_path, "--no-machine-keys",
                         "--json")
    doc = json.loads(out)
    assert code == 2 and err == ""
    assert doc["verified"] is False and doc["signatures"][0]["digest_matches"] is False
    assert doc["trust"]["anchors"] == 1


def test_revoke_option(run, signed, pki):
    code, out, _ = run("verify", signed, "--trust", pki.root.cert_path, "--revoke",
                       pki.signer.cert_path, "--no-machine-keys", "--json")
    assert code == 2 and "revoked" in json.loads(out)["reason"]


def test_bad_trust_file_is_one_error_line(run, signed, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk")
    code, _, err = run("verify", signed, "--trust", junk, "--no-machine-keys")
    assert code == 2 and "neither a PEM certificate" in err


def test_load_options_parse(monkeypatch):
    import argparse
    p = argparse.ArgumentParser()
    for flags, kwargs in trust_cli.LOAD_OPTIONS:
        p.add_argument(*flags, **kwargs)
    assert trust_cli.load_policy_args(p.parse_args([])) == {"require_signature": None, "trust": ()}
    assert trust_cli.load_policy_args(p.parse_args(["--no-require-signature"]))["require_signature"] is False
    got = trust_cli.load_policy_args(p.parse_args(["--require-signature", "--trust", "a", "--trust", "b"]))
    assert got == {"require_signature": True, "trust": ("a", "b")}

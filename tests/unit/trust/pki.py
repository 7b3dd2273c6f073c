"""Throwaway keys and certificates made at test time, and Debian's sbsign (sbsigntool).

Plain functions, shared by tests/unit/trust (through its conftest) and
tests/real/test_trust_real.py.  sbsign is the independent signer: if pykexec
and sbsign disagree about what an Authenticode signature covers, the
signed-and-trusted tests fail.  It is installed with ``apt-get install
sbsigntool`` when missing (as root).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Identity:
    """A key, its certificate, and both written as PEM for sbsign."""

    name: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    key_path: Path
    cert_path: Path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_identity(directory: Path, name: str, *, issuer: Identity | None = None, ca: bool = False,
                  basic_constraints: bool = True, key_cert_sign: bool | None = None,
                  not_before: datetime.datetime | None = None,
                  not_after: datetime.datetime | None = None) -> Identity:
    """A certificate for ``name``, self-signed unless ``issuer`` is given."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
               .not_valid_after(not_after or NOW + datetime.timedelta(days=30)))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    sign_certs = ca if key_cert_sign is None else key_cert_sign
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=sign_certs, crl_sign=ca,
        encipher_only=False, decipher_only=False), critical=True)
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                        critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(name, key, cert, key_path, cert_path)


@dataclass(frozen=True)
class Pki:
    root: Identity
    intermediate: Identity
    signer: Identity
    deep_signer: Identity
    rogue_root: Identity
    rogue_signer: Identity
    not_a_ca: Identity
    under_not_a_ca: Identity
    expired_signer: Identity
    directory: Path


def sbsign_path() -> str:
    path = shutil.which("sbsign")
    if path is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "sbsigntool"],
                       check=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which("sbsign")
    if path is None:
        raise RuntimeError("sbsign (Debian package sbsigntool) is required: apt-get install sbsigntool")
    return path


def sbsign_file(src: Path, out: Path, who: Identity, addcerts: Path | None = None) -> None:
    """Sign ``src`` into ``out`` with sbsign."""
    cmd = [sbsign_path(), "--key", str(who.key_path), "--cert", str(who.cert_path),
           "--output", str(out)]
    if addcerts is not None:
        cmd += ["--addcert", str(addcerts)]
    proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbsign failed: {proc.stderr}")

"""Verifying a PE image's Authenticode signatures against a :class:`TrustStore`.

The rules are UEFI's (UEFI 2.10 §32.5.3.3, as EDK II's
``DxeImageVerificationLib`` and its ``Pkcs7Verify`` implement them), not
Windows':

* **any** WIN_CERTIFICATE whose signature, or any of whose certificates, is in
  ``dbx`` refuses the image, and so does the image's own hash in ``dbx``;
* the image is allowed when **one** signature verifies and chains to a
  certificate in ``db``, or its hash is in ``db``;
* the chain may end at *any* trusted certificate, root or not (OpenSSL's
  ``X509_V_FLAG_PARTIAL_CHAIN``); a certificate that is itself trusted is
  enough;
* validity dates are **not** checked (firmware has no trusted clock:
  ``X509_V_FLAG_NO_CHECK_TIME``), and neither are extended key usages
  (``X509_PURPOSE_ANY``);
* each issuing certificate must be allowed to issue: basicConstraints cA, or a
  v1 certificate, and keyCertSign when it has a keyUsage;
* timestamps and nested signatures (szOID_NESTED_SIGNATURE) are ignored, as
  firmware ignores them; SHA-1 image digests are refused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import FormatError
from . import authenticode, sbat
from .store import TrustedCertificate, TrustStore, load_certificate

log = logging.getLogger(__name__)

ACCEPTED_DIGESTS = ("sha256", "sha384", "sha512")
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
          "sha512": hashes.SHA512}
RSA_SIGNATURES = {"1.2.840.113549.1.1.1", "1.2.840.113549.1.1.5", "1.2.840.113549.1.1.11",
                  "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13"}
ECDSA_SIGNATURES = {"1.2.840.10045.2.1", "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3",
                    "1.2.840.10045.4.3.4"}
MAX_CHAIN = 8


@dataclass(frozen=True)
class CertInfo:
    """What a report says about one certificate."""

    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    sha256: str
    source: str | None = None

    @classmethod
    def of(cls, cert: x509.Certificate, source: str | None = None) -> "CertInfo":
        return cls(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                   serial=f"{cert.serial_number:#x}",
                   not_before=cert.not_valid_before_utc.isoformat(),
                   not_after=cert.not_valid_after_utc.isoformat(),
                   sha256=cert.fingerprint(hashes.SHA256()).hex(), source=source)


@dataclass(frozen=True)
class SignatureReport:
    """One WIN_CERTIFICATE: who signed, the chain, and what is wrong with it."""

    index: int
    offset: int
    digest_algorithm: str | None = None
    digest_matches: bool = False
    signer: CertInfo | None = None
    certificates: tuple[CertInfo, ...] = ()
    chain: tuple[CertInfo, ...] = ()
    anchor: CertInfo | None = None
    trusted: bool = False
    revoked: str | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The outcome for one image: verified or not, and why."""

    what: str
    verified: bool
    reason: str
    authentihash: str | None = None
    signatures: tuple[SignatureReport, ...] = ()
    sbat: tuple[sbat.SbatEntry, ...] | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = asdict(self)
        out["sbat"] = None if self.sbat is None else [e.to_json() for e in self.sbat]
        return out


def verify_image(data: bytes, trust: TrustStore, *, what: str = "image") -> Verdict:
    """Check every signature of ``data`` and decide, by the rules above."""
    notes = list(trust.notes)
    try:
        where = authenticode.layout(data)
    except FormatError as e:
        return Verdict(what, False, f"not a PE image, so it carries no Authenticode signature ({e})",
                       notes=tuple(notes))
    if where.zero_padding:
        notes.append(f"{where.zero_padding} zero bytes after the certificate table are padding "
                     "and are not hashed")
    if where.trailing:
        notes.append(f"{where.trailing} non-zero bytes follow the certificate table; they were "
                     "not signed")
    digests = _Digests(data, where)
    try:
        image_sbat = sbat.of_image(data)
    except FormatError as e:
        image_sbat = None
        notes.append(f"SBAT: {e}")
    base = dict(what=what, authentihash=digests["sha256"].hex(), sbat=image_sbat)

    for alg, value in trust.revoked_hashes:
        if alg in HASHES and digests[alg] == value:
            return Verdict(verified=False, reason=f"the image's {alg} hash is revoked (dbx)",
                           notes=tuple(notes), **base)
    try:
        entries = authenticode.certificate_entries(data, where)
    except FormatError as e:
        return Verdict(verified=False, reason=f"the certificate table is malformed: {e}",
                       notes=tuple(notes), **base)
    reports = tuple(_check_entry(i, entry, digests, trust) for i, entry in enumerate(entries, 1))
    base["signatures"] = reports
    revoked = next((r for r in reports if r.revoked), None)
    if revoked is not None:
        return Verdict(verified=False, reason=f"signature {revoked.index}: {revoked.revoked}",
                       notes=tuple(notes), **base)
    if image_sbat is not None and trust.sbat_level:
        why = sbat.revoked(image_sbat, trust.sbat_level)
        if why:
            return Verdict(verified=False, reason="; ".join(why), notes=tuple(notes), **base)
    good = next((r for r in reports if r.trusted), None)
    if good is not None:
        anchor = good.anchor
        return Verdict(verified=True, reason=f"signature {good.index} by {good.signer.subject} "
                       f"chains to {anchor.subject} ({anchor.source})", notes=tuple(notes), **base)
    for alg, value in trust.allowed_hashes:
        if alg in HASHES and digests[alg] == value:
            return Verdict(verified=True, reason=f"the image's {alg} hash is allowed (db)",
                           notes=tuple(notes), **base)
    return Verdict(verified=False, reason=_why_not(reports, trust), notes=tuple(notes), **base)


def _why_not(reports: tuple[SignatureReport, ...], trust: TrustStore) -> str:
    if not reports:
        why = "the image is not signed (no certificate table)"
        return why + ("" if not trust.allowed_hashes else " and its hash is not in db")
    if trust.empty:
        return ("there are no trust anchors: give --trust FILE, or run where the UEFI db and "
                "MokListRT are readable")
    parts = [f"signature {r.index}: {'; '.join(r.problems) or 'not trusted'}" for r in reports]
    return "; ".join(parts)


class _Digests(dict):
    """Authentihashes computed on first use, one per algorithm."""

    def __init__(self, data: bytes, where: authenticode.SignedLayout) -> None:
        super().__init__()
        self.data, self.where = data, where

    def __missing__(self, alg: str) -> bytes:
        value = authenticode.authentihash(self.data, alg, self.where)
        self[alg] = value
        return value


def _check_entry(index: int, entry: authenticode.CertificateEntry, digests: _Digests,
                 trust: TrustStore) -> SignatureReport:
    base = dict(index=index, offset=entry.offset)
    blob = entry.pkcs7
    if blob is None:
        return SignatureReport(problems=(f"certificate type {entry.cert_type:#06x} carries no "
                                         "PKCS #7 signature; ignored",), **base)
    try:
        sd = authenticode.parse_signed_data(blob)
    except FormatError as e:
        return SignatureReport(problems=(f"the signature does not parse: {e}",), **base)
    certs, problems = [], []
    for n, raw in enumerate(sd.certificates):
        try:
            certs.append(load_certificate(raw))
        except ValueError as e:
            problems.append(f"embedded certificate {n} does not parse ({e})")
    base["digest_algorithm"] = sd.image_digest_algorithm
    base["certificates"] = tuple(CertInfo.of(c) for c in certs)
    revoked = _revoked(certs, trust)
    if revoked:
        return SignatureReport(revoked=revoked, problems=(revoked,), **base)
    if len(sd.signers) != 1:
        problems.append(f"Authenticode requires exactly one SignerInfo, found {len(sd.signers)}")
    signer = sd.signers[0]
    if sd.data_type != authenticode.OID_SPC_PE_IMAGE_DATA:
        problems.append(f"the signed data is of type {sd.data_type}, not SpcPeImageData")
    alg = sd.image_digest_algorithm
    if alg not in ACCEPTED_DIGESTS:
        problems.append(f"{alg} image digests are not accepted (use sha256 or stronger)")
    elif signer.digest_algorithm != alg:
        problems.append(f"the signer digests with {signer.digest_algorithm} but the image "
                        f"digest is {alg}")
    digest_matches = alg in HASHES and digests[alg] == sd.image_digest
    if not digest_matches:
        problems.append(f"the image's {alg} Authenticode digest {digests[alg].hex()} is not the "
                        f"signed one {sd.image_digest.hex()}: the image was changed after signing")
    base["digest_matches"] = digest_matches
    if signer.nested_signatures:
        base["notes"] = (f"{signer.nested_signatures} nested signature(s) ignored, as "
                         "firmware ignores them",)
    candidates = _signer_certificates(signer, certs, trust)
    if not candidates:
        problems.append("the signer's certificate is neither in the signature nor trusted")
        return SignatureReport(problems=tuple(problems), **base)
    checked = [(c, _check_signer(signer, sd, c)) for c in candidates]
    cert, signer_problems = next((x for x in checked if not x[1]), checked[0])
    base["signer"] = CertInfo.of(cert)
    problems += signer_problems
    chain, anchor, chain_problem = _build_chain(cert, certs, trust)
    base["chain"] = tuple(CertInfo.of(c.certificate if isinstance(c, TrustedCertificate) else c,
                                      c.source if isinstance(c, TrustedCertificate) else None)
                          for c in chain)
    revoked = _revoked([c.certificate if isinstance(c, TrustedCertificate) else c for c in chain],
                       trust)
    if revoked:
        return SignatureReport(revoked=revoked, problems=(*problems, revoked), **base)
    if anchor is None:
        problems.append(chain_problem)
    else:
        base["anchor"] = CertInfo.of(anchor.certificate, anchor.source)
    return SignatureReport(trusted=not problems and anchor is not None, problems=tuple(problems),
                           **base)


def _revoked(certs, trust: TrustStore) -> str | None:
    """Why one of ``certs`` is in dbx (as a certificate or by its TBS hash), or None."""
    forbidden = {r.certificate: r.source for r in trust.revoked_certificates}
    for c in certs:
        if c in forbidden:
            return f"certificate {c.subject.rfc4514_string()} is revoked ({forbidden[c]})"
        for alg, value in trust.revoked_tbs_hashes:
            if hashlib.new(alg, c.tbs_certificate_bytes).digest() == value:
                return (f"certificate {c.subject.rfc4514_string()} is revoked by its {alg} "
                        "TBS hash (dbx)")
    return None


def _signer_certificates(signer: authenticode.SignerInfo, certs: list[x509.Certificate],
                         trust: TrustStore) -> list[x509.Certificate]:
    """Certificates that match the SignerInfo's sid (the embedded ones first, then anchors)."""
    out = []
    for c in dict.fromkeys(certs + [a.certificate for a in trust.anchors]):
        if signer.subject_key_id is not None:
            ski = _extension(c, x509.SubjectKeyIdentifier)
            if ski is not None and ski.digest == signer.subject_key_id:
                out.append(c)
        elif c.serial_number == signer.serial:
            issuer, _ = authenticode.certificate_issuer_and_serial(c.public_bytes(Encoding.DER))
            if issuer == signer.issuer:
                out.append(c)
    return out


def _check_signer(signer: authenticode.SignerInfo, sd: authenticode.SignedData,
                  cert: x509.Certificate) -> list[str]:
    """RFC 2315 §9.3/§9.4: message digest over the content, signature over the attributes."""
    if signer.digest_algorithm not in HASHES:
        return [f"unsupported signer digest {signer.digest_algorithm}"]
    content_digest = hashlib.new(signer.digest_algorithm, sd.content).digest()
    if signer.signed_attributes is None:
        message = sd.content
    else:
        problems = []
        if signer.content_type != authenticode.OID_SPC_INDIRECT_DATA:
            problems.append(f"signed contentType attribute is {signer.content_type}, expected "
                            "SpcIndirectDataContent")
        if signer.message_digest != content_digest:
            problems.append("the signed messageDigest attribute does not match the signed "
                            "content")
        if problems:
            return problems
        message = signer.signed_attributes
    algorithm = HASHES[signer.digest_algorithm]()
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and signer.signature_algorithm in RSA_SIGNATURES:
            key.verify(signer.signature, message, padding.PKCS1v15(), algorithm)
        elif (isinstance(key, ec.EllipticCurvePublicKey)
              and signer.signature_algorithm in ECDSA_SIGNATURES):
            key.verify(signer.signature, message, ec.ECDSA(algorithm))
        else:
            return [f"signature algorithm {signer.signature_algorithm} with a "
                    f"{type(key).__name__} is not supported"]
    except InvalidSignature:
        return ["the signer's signature does not verify with its certificate's key"]
    except UnsupportedAlgorithm as e:
        return [f"the signature cannot be checked: {e}"]
    return []


def may_issue(cert: x509.Certificate) -> str | None:
    """Why ``cert`` may not issue certificates (None when it may), as OpenSSL's
    non-strict ``X509_check_ca``: basicConstraints cA, else keyCertSign, else a v1 certificate."""
    name = cert.subject.rfc4514_string()
    bc, ku = _extension(cert, x509.BasicConstraints), _extension(cert, x509.KeyUsage)
    if bc is not None and not bc.ca:
        return f"{name} is not a CA (basicConstraints cA is false)"
    if ku is not None and not ku.key_cert_sign:
        return f"{name}'s keyUsage does not allow keyCertSign"
    if bc is None and ku is None and cert.version != x509.Version.v1:
        return f"{name} has neither basicConstraints nor keyUsage, so it may not issue"
    return None


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None when ``issuer`` signed ``cert`` and may issue; else why not."""
    if cert.issuer != issuer.subject:
        return "names differ"
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as e:
        return (f"{cert.subject.rfc4514_string()} is not signed by the key of "
                f"{issuer.subject.rfc4514_string()} ({type(e).__name__})")
    return may_issue(issuer)


def _build_chain(leaf: x509.Certificate, pool: list[x509.Certificate], trust: TrustStore):
    """(chain from the leaf upward, the anchor or None, why there is no anchor)."""
    anchors = {a.certificate: a for a in trust.anchors}
    best: list = [leaf]
    reasons: list[str] = []

    def walk(path: list):
        nonlocal best
        top = path[-1]
        if top in anchors:
            return path[:-1] + [anchors[top]], anchors[top]
        if len(path) >= MAX_CHAIN:
            return None
        for a in trust.anchors:
            if a.certificate.subject == top.issuer:
                why = _issued_by(top, a.certificate)
                if why is None:
                    return path + [a], a
                reasons.append(f"trusted {a.certificate.subject.rfc4514_string()} "
                               f"({a.source}): {why}")
        for c in pool:
            if c in path or c.subject != top.issuer:
                continue
            why = _issued_by(top, c)
            if why is not None:
                reasons.append(why)
                continue
            if len(path) + 1 > len(best):
                best = path + [c]
            found = walk(path + [c])
            if found:
                return found
        return None

    found = walk([leaf])
    if found:
        return found[0], found[1], None
    top = best[-1]
    why = (f"no trusted certificate issued {top.subject.rfc4514_string()} "
           f"(issuer {top.issuer.rfc4514_string()}) and it is not trusted itself")
    if trust.empty:
        why = "there are no trust anchors (no --trust, and no readable db or MokListRT)"
    if reasons:
        why += "; " + "; ".join(dict.fromkeys(reasons))
    return best, None, why


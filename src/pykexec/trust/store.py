"""Trust stores: what is allowed (UEFI ``db``, shim's ``MokListRT``, ``--trust`` files)
and what is revoked (``dbx``, ``MokListXRT``, ``--revoke`` files).

UEFI 2.10 §32.5.3 ("Image Execution Validation") gives the rules mirrored here:
an image is refused when its hash, or a certificate of its signature, is in
``dbx``; otherwise it is allowed when a signature chains to a certificate in
``db`` or its hash is in ``db``.  shim extends ``db`` with ``MokList`` (and its
built-in vendor certificate) and ``dbx`` with ``MokListX``; it mirrors them to
the runtime variables ``MokListRT`` and ``MokListXRT``, split over
``MokListRT1``, ``MokListRT2``, ... when large.

Certificate files may be PEM (one or more certificates), DER, or an EFI
signature list (raw, as ``efi-readvar -o`` writes it, or an efivarfs file
with its 4-byte attributes).  The efivarfs root is a parameter; its default
is the real one.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import FormatError
from . import esl, sbat
from .efivars import EFIVARS, efivar_name

log = logging.getLogger(__name__)

PEM_MARKER = b"-----BEGIN CERTIFICATE-----"
HASH_TYPES = {esl.EFI_CERT_SHA256_GUID: "sha256", esl.EFI_CERT_SHA1_GUID: "sha1",
              esl.EFI_CERT_SHA384_GUID: "sha384", esl.EFI_CERT_SHA512_GUID: "sha512"}
TBS_HASH_TYPES = {esl.EFI_CERT_X509_SHA256_GUID: "sha256",
                  esl.EFI_CERT_X509_SHA384_GUID: "sha384",
                  esl.EFI_CERT_X509_SHA512_GUID: "sha512"}
MOK_SPLIT_MAX = 16


def load_certificate(data: bytes) -> x509.Certificate:
    """An X.509 certificate, parsed completely now: ``cryptography`` parses names,
    extensions and keys lazily, and a malformed one must fail here (ValueError), not
    later in the middle of a verification."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            cert = x509.load_der_x509_certificate(data)
            cert.subject, cert.issuer, cert.extensions, cert.serial_number  # noqa: B018
            cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
            cert.public_key()
        except (x509.InvalidVersion, UnsupportedAlgorithm, CryptographyDeprecationWarning) as e:
            raise ValueError(str(e)) from e
    return cert


DB = efivar_name("db", esl.EFI_IMAGE_SECURITY_DATABASE)
DBX = efivar_name("dbx", esl.EFI_IMAGE_SECURITY_DATABASE)
SBAT_LEVEL = efivar_name("SbatLevelRT", esl.SHIM_LOCK_GUID)


@dataclass(frozen=True)
class TrustedCertificate:
    """A certificate and where it came from (``db``, ``MokListRT``, a ``--trust`` file)."""

    certificate: x509.Certificate
    source: str


@dataclass(frozen=True)
class TrustStore:
    """Anchors and revocations, immutable; combine with :meth:`merged`."""

    anchors: tuple[TrustedCertificate, ...] = ()
    allowed_hashes: frozenset[tuple[str, bytes]] = frozenset()
    revoked_certificates: tuple[TrustedCertificate, ...] = ()
    revoked_hashes: frozenset[tuple[str, bytes]] = frozenset()
    revoked_tbs_hashes: frozenset[tuple[str, bytes]] = frozenset()
    sbat_level: dict[str, int] | None = field(default=None, hash=False, compare=False)
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """No certificate and no image hash is trusted: nothing can verify."""
        return not self.anchors and not self.allowed_hashes

    def merged(self, other: "TrustStore") -> "TrustStore":
        level = self.sbat_level if other.sbat_level is None else other.sbat_level
        return TrustStore(
            anchors=self.anchors + other.anchors,
            allowed_hashes=self.allowed_hashes | other.allowed_hashes,
            revoked_certificates=self.revoked_certificates + other.revoked_certificates,
            revoked_hashes=self.revoked_hashes | other.revoked_hashes,
            revoked_tbs_hashes=self.revoked_tbs_hashes | other.revoked_tbs_hashes,
            sbat_level=level, sources=self.sources + other.sources, notes=self.notes + other.notes)

    def describe(self) -> dict:
        return {"anchors": len(self.anchors), "allowed_hashes": len(self.allowed_hashes),
                "revoked_certificates": len(self.revoked_certificates),
                "revoked_hashes": len(self.revoked_hashes) + len(self.revoked_tbs_hashes),
                "sbat_level": self.sbat_level, "sources": list(self.sources),
                "notes": list(self.notes)}

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_entries(cls, entries: tuple[esl.SignatureEntry, ...], *, source: str,
                     revoke: bool = False) -> "TrustStore":
        """A store from EFI signature list entries: allowed, or (``revoke``) forbidden."""
        certs, hashes, tbs, notes = [], set(), set(), []
        for n, e in enumerate(entries):
            if e.type == esl.EFI_CERT_X509_GUID:
                try:
                    certs.append(TrustedCertificate(load_certificate(e.data), source))
                except ValueError as err:
                    notes.append(f"{source}: entry {n} is not a valid X.509 certificate ({err}); "
                                 "skipped")
            elif e.type in HASH_TYPES:
                hashes.add((HASH_TYPES[e.type], e.data))
            elif revoke and e.type in TBS_HASH_TYPES and len(e.data) >= 16:
                # EFI_CERT_X509_SHA*: ToBeSignedHash followed by EFI_TIME TimeOfRevocation
                size = {"sha256": 32, "sha384": 48, "sha512": 64}[TBS_HASH_TYPES[e.type]]
                tbs.add((TBS_HASH_TYPES[e.type], e.data[:size]))
            else:
                notes.append(f"{source}: entry {n} of type {e.kind} is not used")
        described = f"{source} ({len(certs)} certificates, {len(hashes) + len(tbs)} hashes)"
        if revoke:
            return cls(revoked_certificates=tuple(certs), revoked_hashes=frozenset(hashes),
                       revoked_tbs_hashes=frozenset(tbs), sources=(f"revoked: {described}",),
                       notes=tuple(notes))
        return cls(anchors=tuple(certs), allowed_hashes=frozenset(hashes),
                   sources=(f"trusted: {described}",), notes=tuple(notes))

    @classmethod
    def from_file(cls, path: str | Path, *, revoke: bool = False) -> "TrustStore":
        """A ``--trust`` (or ``--revoke``) file: PEM, DER or an EFI signature list."""
        data = Path(path).read_bytes()
        return cls.from_entries(read_certificate_file(data, source=str(path)), source=str(path),
                                revoke=revoke)

    @classmethod
    def from_files(cls, trust: tuple = (), revoke: tuple = ()) -> "TrustStore":
        store = cls()
        for p in trust:
            store = store.merged(cls.from_file(p))
        for p in revoke:
            store = store.merged(cls.from_file(p, revoke=True))
        return store

    @classmethod
    def from_efivars(cls, root: Path = EFIVARS) -> "TrustStore":
        """``db`` and ``MokListRT`` as anchors, ``dbx`` and ``MokListXRT`` as revocations,
        ``SbatLevelRT``; what cannot be read is noted, never fatal."""
        store = cls()
        if not root.is_dir():
            return replace(store, notes=(f"{root}: no efivarfs (not booted with UEFI, or not "
                                         "mounted); the machine's db and dbx are not used",))
        store = store.merged(_variable_store(root, DB, revoke=False))
        for name in _mok_names(root, "MokListRT"):
            store = store.merged(_variable_store(root, name, revoke=False))
        store = store.merged(_variable_store(root, DBX, revoke=True))
        for name in _mok_names(root, "MokListXRT"):
            store = store.merged(_variable_store(root, name, revoke=True))
        level = _read_var(root, SBAT_LEVEL)
        if isinstance(level, bytes):
            try:
                store = replace(store, sbat_level=sbat.parse_level(level, source=SBAT_LEVEL))
            except FormatError as e:
                store = replace(store, notes=store.notes + (f"{SBAT_LEVEL}: {e}; not used",))
        return store

    @classmethod
    def load(cls, trust: tuple = (), *, revoke: tuple = (),
             efivars: Path | None = EFIVARS) -> "TrustStore":
        """The files given, plus the machine's own variables unless ``efivars`` is None."""
        store = cls.from_files(tuple(trust), tuple(revoke))
        if efivars is not None:
            store = cls.from_efivars(efivars).merged(store)
        return store


def _mok_names(root: Path, base: str) -> list[str]:
    names = [efivar_name(base, esl.SHIM_LOCK_GUID)]
    names += [efivar_name(f"{base}{i}", esl.SHIM_LOCK_GUID) for i in range(1, MOK_SPLIT_MAX)
              if (root / efivar_name(f"{base}{i}", esl.SHIM_LOCK_GUID)).exists()]
    return names


def _read_var(root: Path, name: str) -> bytes | str:
    """An efivarfs variable's payload, or a sentence saying why it cannot be had."""
    try:
        raw = (root / name).read_bytes()
    except FileNotFoundError:
        return f"{name}: not present"
    except OSError as e:
        return f"{name}: cannot be read ({e.strerror or e})"
    try:
        return esl.strip_attributes(raw, source=name)
    except FormatError as e:
        return str(e)


def _variable_store(root: Path, name: str, *, revoke: bool) -> TrustStore:
    payload = _read_var(root, name)
    if isinstance(payload, str):
        return TrustStore(notes=(payload,))
    try:
        entries = esl.parse(payload, source=name)
    except FormatError as e:
        log.warning("%s; not used", e)
        return TrustStore(notes=(f"{e}; not used",))
    return TrustStore.from_entries(entries, source=name, revoke=revoke)


def read_certificate_file(data: bytes, *, source: str) -> tuple[esl.SignatureEntry, ...]:
    """PEM, DER or an EFI signature list (with or without efivarfs attributes), as entries."""
    owner = uuid.UUID(int=0)
    if PEM_MARKER in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
            for c in certs:
                load_certificate(c.public_bytes(Encoding.DER))
        except ValueError as e:
            raise FormatError(source, f"PEM certificate does not parse: {e}") from e
        return tuple(esl.SignatureEntry(esl.EFI_CERT_X509_GUID, owner, c.public_bytes(Encoding.DER))
                     for c in certs)
    for skip in (0, esl.ATTRIBUTES_SIZE):
        if esl.looks_like_list(data[skip:]):
            return esl.parse(data[skip:], source=source)
    try:
        load_certificate(data)
    except ValueError as e:
        raise FormatError(source, "neither a PEM certificate, a DER certificate nor an EFI "
                          f"signature list (it starts {data[:8].hex(' ') or 'empty'})") from e
    return (esl.SignatureEntry(esl.EFI_CERT_X509_GUID, owner, data),)

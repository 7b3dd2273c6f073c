"""Trust: Authenticode verification of PE boot images, UEFI trust stores, the load policy.

What is implemented, and against which specification:

* :mod:`.authenticode`: the PE image hash and the attribute certificate table
  (PE/COFF specification; Microsoft's Authenticode PE format) and the PKCS #7
  SignedData inside it (RFC 2315, RFC 5652), parsed by :mod:`.der`;
* :mod:`.esl`: EFI signature lists (UEFI 2.10 §32.4.1), the format of ``db``,
  ``dbx`` and ``MokListRT``; :mod:`.efivars`: where efivarfs is, and its file names;
* :mod:`.store`: trust anchors and revocations from ``--trust`` files and
  from efivarfs;
* :mod:`.verify`: the decision, by UEFI's rules (partial chains, no time
  checks, dbx wins);
* :mod:`.sbat`: the ``.sbat`` section and shim's ``SbatLevelRT``;
* :mod:`.policy`: when a signature is required, and the hook ``api.load`` calls.

Cryptography (hashes, RSA/ECDSA, X.509) is the ``cryptography`` package's;
PE layout is ``pefile``'s.  See docs/security.md for what is and is not
covered.
"""

import importlib

# Exported names and their modules: imported on first use, so that a load that
# needs no signature check never imports cryptography.
_EXPORTS = {
    "LoadTrust": "policy", "check_load": "policy", "default_required": "policy",
    "read_secure_boot": "policy", "require_signature": "policy", "writable_warning": "policy",
    "EFIVARS": "efivars", "TrustedCertificate": "store", "TrustStore": "store",
    "CertInfo": "verify", "SignatureReport": "verify", "Verdict": "verify",
    "verify_image": "verify",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EFIVARS", "CertInfo", "LoadTrust", "SignatureReport", "TrustStore", "TrustedCertificate",
    "Verdict", "check_load", "default_required", "read_secure_boot", "require_signature",
    "verify_image", "writable_warning",
]

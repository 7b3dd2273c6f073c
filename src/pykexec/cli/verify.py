"""Command-line pieces of the signature policy, for :mod:`pykexec.cli` to merge.

* ``COMMANDS`` / ``HANDLERS``: the ``verify`` verb, in the shape of the
  tables in :mod:`pykexec.cli`;
* ``LOAD_OPTIONS``: options to append to the ``load`` verb's list;
  :func:`load_policy_args` turns the parsed ones into keyword arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import SignatureRejected
from ..trust.efivars import EFIVARS

if TYPE_CHECKING:  # cryptography loads only when `verify` runs
    from ..trust.store import TrustStore
    from ..trust.verify import CertInfo, Verdict

TRUST_HELP = ("trust this certificate: PEM, DER or an EFI signature list (X.509 and SHA-256 "
              "entries); repeat for several")
TRUST_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--trust",), {"action": "append", "default": [], "metavar": "FILE", "help": TRUST_HELP}),
    (("--revoke",), {"action": "append", "default": [], "metavar": "FILE",
                     "help": "refuse this certificate or image hash, as dbx does (PEM, DER or "
                             "an EFI signature list)"}),
    (("--efivars",), {"metavar": "DIR", "default": str(EFIVARS),
                      "help": "where db, dbx, MokListRT and SecureBoot are read "
                              f"(default {EFIVARS})"}),
    (("--no-machine-keys",), {"action": "store_true",
                              "help": "use only --trust/--revoke, not the machine's db, "
                                      "MokListRT and dbx"}),
]

# name: (help, [(flags, kwargs), ...]), as pykexec.cli.COMMANDS
COMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict]]]] = {
    "verify": ("check an image's Authenticode signatures against --trust and the UEFI db, "
               "MokListRT and dbx", [
                   (("image",), {"help": "PE image: signed bzImage, UKI, add-on, zboot, ..."}),
                   *TRUST_OPTIONS,
                   (("--json",), {"action": "store_true", "help": "print one JSON object"}),
               ]),
}

# to append to COMMANDS["load"] in pykexec.cli
LOAD_OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--require-signature",), {
        "action": argparse.BooleanOptionalAction, "default": None,
        "help": "refuse images (and UKI add-ons) whose Authenticode signature does not verify "
                "(default: on under kernel lockdown or UEFI Secure Boot)"}),
    (("--trust",), {"action": "append", "default": [], "metavar": "FILE", "help": TRUST_HELP}),
]


def load_policy_args(args: argparse.Namespace) -> dict:
    """``require_signature`` and ``trust`` for :class:`pykexec.api.LoadOptions`."""
    return {"require_signature": args.require_signature, "trust": tuple(args.trust)}


def store_from_args(args: argparse.Namespace) -> TrustStore:
    efivars = None if args.no_machine_keys else Path(args.efivars)
    from ..trust.store import TrustStore
    return TrustStore.load(tuple(args.trust), revoke=tuple(args.revoke), efivars=efivars)


def cmd_verify(args: argparse.Namespace) -> int:
    trust = store_from_args(args)
    data = Path(args.image).read_bytes()
    from ..trust.verify import verify_image
    verdict = verify_image(data, trust, what=args.image)
    if args.json:
        import json
        print(json.dumps({**verdict.to_json(), "trust": trust.describe()}, indent=2))
        return 0 if verdict.verified else 2
    print(render(verdict, trust))
    if not verdict.verified:
        raise SignatureRejected(args.image, verdict.reason)
    return 0


def _cert(c: CertInfo) -> str:
    return (f"{c.subject} (issuer {c.issuer}, serial {c.serial}, "
            f"valid {c.not_before[:10]} to {c.not_after[:10]})")


def render(verdict: Verdict, trust: TrustStore) -> str:
    """The human report of ``pykexec verify``."""
    lines = [f"{verdict.what}:"]
    if verdict.authentihash:
        lines.append(f"  authentihash (sha256): {verdict.authentihash}")
    if not verdict.signatures:
        lines.append("  signatures: none")
    for s in verdict.signatures:
        lines.append(f"  signature {s.index} (WIN_CERTIFICATE at {s.offset:#x}, "
                     f"{s.digest_algorithm or 'unknown digest'}): "
                     f"digest {'matches' if s.digest_matches else 'does NOT match'}")
        if s.signer:
            lines.append(f"    signer: {_cert(s.signer)}")
        if s.chain:
            lines.append("    chain: " + " -> ".join(c.subject for c in s.chain)
                         + (f"  [trusted: {s.anchor.source}]" if s.anchor else "  [no anchor]"))
        for p in s.problems:
            lines.append(f"    problem: {p}")
        for n in s.notes:
            lines.append(f"    note: {n}")
    if verdict.sbat is not None:
        lines.append("  sbat:")
        lines += [f"    {e.line()}" for e in verdict.sbat]
    lines.append(f"  trust: {', '.join(trust.sources) or 'none'}")
    for n in verdict.notes:
        lines.append(f"  note: {n}")
    lines.append(f"  verdict: {'verified' if verdict.verified else 'NOT verified'}: "
                 f"{verdict.reason}")
    return "\n".join(lines)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"verify": cmd_verify}

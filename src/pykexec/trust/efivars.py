"""efivarfs: where UEFI variables are read, and how its files are named.

Documentation/filesystems/efivarfs.rst: each variable is a file named
``Name-GUID`` (its vendor GUID in canonical text form), whose content starts
with the variable's 4-byte attributes.  Kept apart from :mod:`.esl`, which
parses what ``db``, ``dbx`` and ``MokListRT`` hold, so that a load that only
asks whether Secure Boot is on imports neither ``uuid`` nor that parser.
"""

from __future__ import annotations

from pathlib import Path

EFIVARS = Path("/sys/firmware/efi/efivars")
ATTRIBUTES_SIZE = 4

# The vendor GUIDs of the variables pykexec reads.
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"          # SecureBoot (UEFI)
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # db, dbx (UEFI)
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"               # MokListRT, SbatLevelRT (shim)


def efivar_name(name: str, guid) -> str:
    """An efivarfs file name: ``Name-GUID``."""
    return f"{name}-{guid}"

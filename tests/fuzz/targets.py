"""Fuzz targets: every parser and the planner, each taking raw bytes.

The contract every target checks: an input ends in success or in pykexec's own
error types (:class:`pykexec.errors.PykexecError`); anything else is a crash.
Time (1 s per input) and memory (512 MiB) bounds are the fuzzer's
(``-timeout=1 -rss_limit_mb=512``), enforced by libFuzzer under atheris.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pykexec import formats
from pykexec.errors import PykexecError
from pykexec.limits import Limits
from pykexec.machine import description

LIMITS = Limits(max_output=64 << 20)
DATA = Path(__file__).parents[1] / "data" / "machines"


def parse_image(data: bytes) -> None:
    """Every format, every wrapper, nesting followed (the registry's unwrap)."""
    formats.unwrap(data, LIMITS)


def parse_description(data: bytes) -> None:
    """A machine description: JSON or /proc/iomem text, detected."""
    description.loads(data.decode("utf-8", "replace"), source="<fuzz>")


@functools.cache
def _kernel():
    from tests import builders
    return formats.unwrap(builders.bzimage(init_size=0x800000))[0]


def plan_on_machine(data: bytes) -> None:
    """The planner on an arbitrary memory map: it places the load or says why not."""
    from pykexec.plan import plan
    machine = description.loads(data.decode("utf-8", "replace"), source="<fuzz>")
    for crash in (False, True):
        try:
            plan(_kernel(), machine=machine, target="linux-file", crash=crash,
                 initrd=b"\0" * 0x10000, cmdline="console=ttyS0").validate()
        except PykexecError:
            pass


def parse_signature(data: bytes) -> None:
    """An Authenticode PKCS #7 SignedData (what ``verify`` and a signature-requiring load read)."""
    from pykexec.trust import authenticode
    authenticode.parse_signed_data(data)


TARGETS = {"image": parse_image, "description": parse_description, "plan": plan_on_machine,
           "authenticode": parse_signature}
SEEDS = {"image": [Path(__file__).parent / "corpus"], "description": [DATA], "plan": [DATA],
         "authenticode": [Path(__file__).parent / "corpus-pkcs7"]}
#: libFuzzer dictionaries: the DER tags and OIDs that lead the fuzzer into the structure
DICTS = {"authenticode": Path(__file__).parent / "der.dict"}


def check(target: str, data: bytes) -> None:
    """Run one input; only PykexecError may escape the target, and it is the expected end."""
    try:
        TARGETS[target](data)
    except PykexecError:
        pass

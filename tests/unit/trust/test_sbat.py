"""SBAT: the .sbat CSV and shim's SbatLevelRT."""

from __future__ import annotations

import pytest

from pykexec.errors import FormatError
from pykexec.trust import sbat
from tests import builders
from tests.unit.trust.conftest import SBAT_CSV


def test_parse_the_csv():
    entries = sbat.parse(SBAT_CSV + b"\0\0\0")
    assert entries[0] == sbat.SbatEntry("sbat", 1, "SBAT Version", "sbat", "1",
                                        "https://github.com/rhboot/shim/blob/main/SBAT.md")
    assert entries[1].component == "systemd-stub" and entries[1].version == "258"
    assert entries[1].line() == SBAT_CSV.decode().splitlines()[1]


def test_short_lines_are_allowed_but_need_a_generation():
    assert sbat.parse(b"sbat,1,SBAT Version\n") == (sbat.SbatEntry("sbat", 1, "SBAT Version"),)
    with pytest.raises(FormatError, match="generation"):
        sbat.parse(b"grub,x\n")
    with pytest.raises(FormatError, match="at least"):
        sbat.parse(b"grub\n")
    with pytest.raises(FormatError, match="UTF-8"):
        sbat.parse(b"grub,1,\xff\n")


def test_of_image(sbat_pe):
    assert len(sbat.of_image(sbat_pe)) == 2
    assert sbat.of_image(builders.pe([(".text", b"\xcc")])) is None


def test_level_and_revocation():
    level = sbat.parse_level(b"sbat,1,2024010900\nshim,4\nsystemd-stub,2\n")
    assert level == {"sbat": 1, "shim": 4, "systemd-stub": 2}
    assert sbat.revoked(sbat.parse(SBAT_CSV), level) == [
        "SBAT component 'systemd-stub' is generation 1, the machine's SbatLevelRT requires 2"]
    assert sbat.revoked(sbat.parse(SBAT_CSV), {"shim": 9}) == []

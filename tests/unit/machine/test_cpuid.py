"""arm64 translation granules from ID_AA64MMFR0_EL1 (Arm ARM D23.2.75) and HWCAP_CPUID from auxv."""

from __future__ import annotations

import platform
import struct

import pytest

from pykexec.machine import cpuid


@pytest.mark.parametrize("mmfr0, sizes", [
    (0x0000000000101122, (4096, 16384, 65536)),      # TGran4 0, TGran64 0, TGran16 1
    (0x00000000F0000000, (65536,)),                   # TGran4 0b1111, TGran16 0: 64K only
    (0x000000000F100000, (4096, 16384)),             # TGran64 0b1111
    (0x0000000010200000, (4096, 16384, 65536)),      # 52-bit variants: TGran4 1, TGran16 2
    (0x00000000FF000000, ()),
])
def test_granules_decode_the_three_fields(mmfr0, sizes):
    assert cpuid.granules(mmfr0) == sizes


def test_hwcap_is_read_from_auxv_pairs():
    auxv = struct.pack("<QQQQQQ", 6, 4096, cpuid.AT_HWCAP, cpuid.HWCAP_CPUID | 1, 0, 0)
    assert cpuid.hwcap(auxv) == cpuid.HWCAP_CPUID | 1
    assert cpuid.hwcap(struct.pack("<QQ", 0, 0)) == 0


@pytest.mark.skipif(platform.machine() == "aarch64", reason="off arm64 there is no register to read")
def test_off_arm64_nothing_is_executed():
    assert cpuid.read_id_aa64mmfr0() is None

"""The bzImage report shows only the setup-header fields the image's protocol has.

The version of each field is boot.rst's table ("The Real-Mode Kernel Header"),
written out here rather than taken from the parser.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pykexec import formats
from tests import builders as b

# field -> the protocol version boot.rst gives for it
BOOT_RST = {
    "initrd_addr_max": 0x203, "kernel_alignment": 0x205, "relocatable_kernel": 0x205,
    "cmdline_size": 0x206, "min_alignment": 0x20A, "pref_address": 0x20A, "init_size": 0x20A,
    "handover_offset": 0x20B, "xloadflags": 0x20C, "xloadflags_names": 0x20C,
    "kernel_info_offset": 0x20F,
}
VERSIONS = tuple(range(0x200, 0x210))


@pytest.mark.parametrize("version", VERSIONS)
def test_report_leaves_out_fields_the_protocol_lacks(version):
    report = formats.identify(b.bzimage(version=version, fill_absent=0xFF)).to_json()
    for name, since in BOOT_RST.items():
        assert (name in report) == (version >= since), (name, hex(version))
    assert report["version"] == f"2.{version & 0xFF:02d}"


@pytest.mark.parametrize("version", [0x200, 0x203])
def test_syssize_before_2_04_is_unknown(version):
    """boot.rst note (2): before 2.04 the upper two bytes of syssize are unusable."""
    layer = formats.identify(b.bzimage(version=version))
    assert layer.syssize is None
    assert formats.identify(b.bzimage(version=0x204)).syssize is not None


def test_inspect_of_a_2_04_image_shows_no_later_fields(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(b.bzimage(version=0x204, fill_absent=0xFF))
    out = subprocess.run([sys.executable, "-m", "pykexec", "inspect", "--json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    bz = json.loads(out)["layers"][0]
    assert bz["format"] == "bzimage" and bz["version"] == "2.04"
    assert not {"pref_address", "init_size", "kernel_alignment", "relocatable_kernel",
                "cmdline_size", "xloadflags", "min_alignment"} & set(bz)
    text = subprocess.run([sys.executable, "-m", "pykexec", "inspect", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert "pref_address" not in text and "xloadflags" not in text and "initrd_addr_max" in text

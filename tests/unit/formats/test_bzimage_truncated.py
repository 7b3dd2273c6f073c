"""A bzImage shorter than its setup header declares.

boot.rst: syssize (2.04+) is "the size of the protected-mode code in units of
16-byte paragraphs"; payload_offset/payload_length (2.08+) locate the payload
from the start of the protected-mode code.  Builders round syssize up without
padding the file (iPXE's ipxe.lkrn is 7 bytes short of syssize * 16), so only a
file a whole paragraph short is truncated.
"""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError
from pykexec.formats.bzimage import BzImage
from pykexec.formats.prepare import prepare
from tests import builders as b

SETUP = 5 * 512  # setup_sects 4


def _image(**kw) -> bytes:
    return b.bzimage(tail=b"\xcc" * 0x103, **kw)  # protected-mode code not a multiple of 16


def _refused(data: bytes) -> FormatError:
    with pytest.raises(FormatError) as info:
        prepare(data)
    assert "\n" not in str(info.value)
    return info.value


def test_whole_image_is_not_truncated():
    image = _image()
    assert (len(image) - SETUP) % 16 != 0
    layer = formats.identify(image)
    assert layer.truncated is None and layer.syssize == -(-(len(image) - SETUP) // 16)
    assert prepare(image).kernel_layer.format == "bzimage"


def test_up_to_fifteen_bytes_short_of_syssize_is_a_rounded_size_not_a_truncation():
    image = _image()
    syssize = formats.identify(image).syssize
    shortest = SETUP + (syssize - 1) * 16 + 1
    assert isinstance(formats.identify(image[:shortest]), BzImage)
    assert formats.identify(image[:shortest]).truncated is None
    assert prepare(image[:shortest]).kernel_layer.format == "bzimage"


@pytest.mark.parametrize("cut", [1, 16, 0xF0])
def test_short_of_syssize(cut):
    image = _image()
    syssize = formats.identify(image).syssize
    data = image[:SETUP + (syssize - 1) * 16 + 1 - cut]
    layer = formats.identify(data)
    assert layer.truncated is not None and f"syssize {syssize:#x}" in layer.truncated
    layers = formats.unwrap(data)  # inspect: marked, not failing, and not unwrapped further
    assert [x.format for x in layers] == ["bzimage"]
    assert layers[0].to_json()["truncated"] == layer.truncated
    err = _refused(data)
    assert (err.layer, err.field, err.offset) == ("bzimage", "syssize", 0x1F4)
    assert "truncated" in str(err) and f"{len(data):#x} bytes" in str(err)


@pytest.mark.parametrize("version", [0x208, 0x20C, 0x20F])
@pytest.mark.parametrize("pe", [False, True])
def test_inside_the_payload(version, pe):
    image = b.bzimage(version=version, pe=pe, tail=b"\xcc" * 0x100)
    start, end = b.bzimage_payload_range(image)
    data = image[:(start + end) // 2]
    layers = formats.unwrap(data)
    assert [x.format for x in layers] == ["bzimage"] and "payload ends at" in layers[0].truncated
    assert layers[0].decompressed_size is None
    err = _refused(data)
    assert (err.layer, err.field, err.offset) == ("bzimage", "payload_length", 0x24C)
    assert f"{end:#x}" in str(err)


@pytest.mark.parametrize("version", [0x200, 0x203])
def test_before_2_04_syssize_is_not_used(version):
    """Before 2.04 syssize cannot give the size; a short image without a 2.08 payload
    header is not called truncated (nor any longer-sized thing)."""
    image = _image(version=version, syssize=0xFFFF)
    assert formats.identify(image).truncated is None


def test_extract_and_plan_refuse_a_truncated_image_through_the_cli(tmp_path):
    import subprocess
    import sys
    image = _image()
    path = tmp_path / "bzImage"
    path.write_bytes(image[:SETUP + 0x100])
    for verb in (["extract", str(path), "-o", str(tmp_path / "out")], ["plan", str(path)]):
        run = subprocess.run([sys.executable, "-m", "pykexec", *verb], capture_output=True, text=True)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "truncated" in lines[0] and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "pykexec", "inspect", str(path)], capture_output=True,
                         text=True)
    assert run.returncode == 0 and "truncated: " in run.stdout
    assert not (tmp_path / "out").exists()

"""The CLI contract: exit 0 and output, or exit 2 with exactly one `pykexec: error:` line that
names the layer/field/offset; never a traceback unless --debug.  In-process and as
``python -m pykexec``."""

from __future__ import annotations

import json

import pytest

from pykexec import cli, formats
from tests import builders as b

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

GOOD = {
    "bzimage": b.bzimage(),
    "zboot": b.zboot(compression="zstd22"),
    "uki": b.uki(initrd=b"INITRD", ucode=b"UCODE", dtb=b"DTB",
                 profiles=[{"cmdline": "p0"}, {"cmdline": "p1"}]),
    "vmlinux.gz": b.compress("gzip", b.elf64()),
    "Image": b.arm64_image(),
    "xen": b.xen_like_elf(),
}

#: (image bytes, text that must appear in the message: the layer and the field or offset)
BAD = {
    "empty": (b"", ["image", "magic", "0x0"]),
    "garbage": (b"\x01\x02\x03" * 100, ["image", "magic"]),
    "setup_sects": (b.bzimage()[:0x1F1] + b"\xc8" + b.bzimage()[0x1F2:], ["bzimage", "setup_sects", "0x1f1"]),
    "payload": (b.bzimage(payload_length=0xFFFFFF), ["bzimage", "payload_length", "0x24c"]),
    "zboot-offset": (b.zboot(payload_offset=-4), ["zboot", "payload_offset", "0x8"]),
    "zboot-type": (b.zboot(compress_type=b"brotli"), ["zboot", "compress_type", "0x18"]),
    "elf-phoff": (b.elf64(e_phoff=0xFFFFFF), ["elf", "e_phoff"]),
    "gzip-cut": (b.compress("gzip", b.elf64())[:40], ["gzip"]),
    "declared": (b.bzimage(payload=b.compress("xz", b.elf64()) + b.le32(5)), ["xz", "declared"]),
    "mb2": (b.multiboot2_image(header_length=8), ["multiboot2", "header_length"]),
}


def run(capsys, *argv):
    rc = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(err: str, needles=()):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pykexec: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("name", sorted(GOOD))
def test_inspect_text(capsys, image_file, name):
    path = image_file(GOOD[name])
    rc, out, err = run(capsys, "inspect", path)
    assert (rc, err) == (0, "")
    assert out.startswith(f"{path}: {len(GOOD[name])} bytes, sha256 ")
    for layer in formats.unwrap(GOOD[name]):
        assert f"] {layer.format} (" in out


@pytest.mark.parametrize("name", sorted(GOOD))
def test_inspect_json(capsys, image_file, name):
    path = image_file(GOOD[name])
    rc, out, err = run(capsys, "inspect", "--json", path)
    report = json.loads(out)
    assert (rc, err) == (0, "")
    assert report["size"] == len(GOOD[name])
    assert [l["format"] for l in report["layers"]] == [l.format for l in formats.unwrap(GOOD[name])]


def test_inspect_reports_spec_field_names(capsys, image_file):
    rc, out, _ = run(capsys, "inspect", "--json", image_file(b.bzimage(init_size=0x1234000)))
    bz = json.loads(out)["layers"][0]
    assert bz["init_size"] == 0x1234000 and bz["setup_sects"] == 4 and bz["version"] == "2.15"


def test_extract_uki(capsys, image_file, tmp_path):
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, "extract", image_file(GOOD["uki"]), "-o", out_dir, "--profile", "1", "--json")
    assert (rc, err) == (0, "")
    written = json.loads(out)
    assert set(written) == {"kernel", "initrd", "cmdline", "dtb", "vmlinux"}
    assert (out_dir / "dtb").read_bytes() == b"DTB"
    assert (out_dir / "cmdline").read_bytes() == b"p1"
    assert (out_dir / "initrd").read_bytes() == b"UCODE\0\0\0INITRD\0\0"
    assert (out_dir / "kernel").read_bytes() == b.bzimage()
    assert (out_dir / "vmlinux").read_bytes() == b.elf64()


def test_extract_zboot(capsys, image_file, tmp_path):
    rc, out, err = run(capsys, "extract", image_file(GOOD["zboot"]), "-o", tmp_path / "o")
    assert (rc, err) == (0, "")
    assert (tmp_path / "o" / "kernel").read_bytes() == b.arm64_image()
    assert out.splitlines()[0].startswith("kernel: ")


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("command", ["inspect", "extract"])
def test_bad_input_exits_2_with_one_line(capsys, image_file, tmp_path, name, command):
    data, needles = BAD[name]
    extra = ["-o", tmp_path / "out"] if command == "extract" else []
    rc, out, err = run(capsys, command, image_file(data), *extra)
    if command == "inspect" and name == "payload":  # inspect reports a truncated bzImage
        assert (rc, err) == (0, "") and "truncated: the payload ends at" in out
        return
    assert rc == 2
    assert_one_error_line(err, needles)


@pytest.mark.parametrize("argv, needles", [
    ([], []),
    (["frobnicate"], ["frobnicate"]),
    (["inspect"], ["image"]),
    (["extract", "x"], ["-o"]),
    (["inspect", "--max-output", "lots", "x"], ["--max-output"]),
    (["extract", "x", "-o", "y", "--profile", "one"], ["--profile"]),
])
def test_usage_errors(capsys, argv, needles):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert_one_error_line(err, needles)


def test_missing_file(capsys, tmp_path):
    rc, _, err = run(capsys, "inspect", tmp_path / "nope")
    assert rc == 2
    assert_one_error_line(err, [str(tmp_path / "nope")])


def test_directory_as_image(capsys, tmp_path):
    rc, _, err = run(capsys, "inspect", tmp_path)
    assert rc == 2
    assert_one_error_line(err)


def test_bad_profile(capsys, image_file, tmp_path):
    rc, _, err = run(capsys, "extract", image_file(GOOD["uki"]), "-o", tmp_path / "o", "--profile", "7")
    assert rc == 2
    assert_one_error_line(err, ["@7"])


def test_profile_for_a_non_uki(capsys, image_file, tmp_path):
    rc, _, err = run(capsys, "extract", image_file(GOOD["Image"]), "-o", tmp_path / "o", "--profile", "0")
    assert rc == 2
    assert_one_error_line(err, ["UKI"])


def test_max_output_option(capsys, image_file):
    path = image_file(b.compress("gzip", b.elf64(load=bytes(100000))))
    rc, _, err = run(capsys, "inspect", "--max-output", "4096", path)
    assert rc == 2
    assert_one_error_line(err, ["gzip", "4096"])
    rc, _, err = run(capsys, "inspect", "--max-output", "0x100000", path)
    assert (rc, err) == (0, "")


def test_debug_shows_the_traceback(capsys, image_file):
    with pytest.raises(Exception) as info:
        cli.main(["inspect", "--debug", str(image_file(BAD["setup_sects"][0]))])
    assert "setup_sects" in str(info.value)


# ---------------------------------------------------------------- as a user runs it


def test_subprocess_success(pykexec_cli, image_file):
    proc = pykexec_cli("inspect", "--json", image_file(GOOD["zboot"]))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert [l["format"] for l in json.loads(proc.stdout)["layers"]] == ["zboot", "zstd", "arm64-image"]


@pytest.mark.parametrize("name", ["empty", "zboot-offset", "declared"])
def test_subprocess_bad_input(pykexec_cli, image_file, name):
    data, needles = BAD[name]
    proc = pykexec_cli("inspect", image_file(data))
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr, needles)


def test_subprocess_debug_traceback(pykexec_cli, image_file):
    proc = pykexec_cli("inspect", "--debug", image_file(BAD["zboot-offset"][0]))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_subprocess_usage_error(pykexec_cli):
    proc = pykexec_cli("inspect")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr)


@pytest.mark.parametrize("value", ["junk", "-", "0x"])
def test_bad_max_output_in_the_environment(pykexec_cli, image_file, value):
    """$PYKEXEC_MAX_OUTPUT is user input like --max-output: a bad value is a usage error."""
    proc = pykexec_cli("inspect", image_file(GOOD["Image"]), env={"PYKEXEC_MAX_OUTPUT": value})
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, ["PYKEXEC_MAX_OUTPUT"])


def test_max_output_from_the_environment(pykexec_cli, image_file):
    path = image_file(b.compress("gzip", b.elf64(load=bytes(100000))))
    proc = pykexec_cli("inspect", path, env={"PYKEXEC_MAX_OUTPUT": "4096"})
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, ["gzip", "4096"])

"""Unified kernel images built with sid's ukify on real systemd stubs (bookworm 252 and sid 262).

Oracles: the bytes that went into ukify, and pefile's reading of the result.
"""

from __future__ import annotations

import hashlib

import pytest

from . import oracles as o
from .helpers import assert_clean_error, extract, formats, inspect_json, material, num, run_cli

pytestmark = pytest.mark.real


def _cmdline(out) -> bytes:
    """DIR/cmdline, without the NUL (and newline) a writer may put at its end."""
    return (out / "cmdline").read_bytes().rstrip(b"\0").rstrip(b"\n")


# --------------------------------------------------------------------------
# single-profile x86-64 UKIs around the bookworm cloud bzImage


@pytest.fixture(params=["bookworm", "sid"], scope="module")
def x64_uki(request, tmp_path_factory, bookworm_cloud, initrd_parts):
    """(uki path, cmdline, kernel bytes, ucode bytes, initrd bytes) for a stub of one suite."""
    suite = request.param
    ucode, initrd = initrd_parts
    cmdline = f"console=ttyS0 quiet pykexec.test=uki-{suite}"
    out = tmp_path_factory.mktemp(f"uki-{suite}") / "linux.efi"
    material.build_uki(out, linux=bookworm_cloud, stub=material.systemd_stub(suite, "x64", "linux"),
                       cmdline=cmdline, initrd=initrd, ucode=ucode)
    return out, cmdline, bookworm_cloud.read_bytes(), ucode.read_bytes(), initrd.read_bytes()


def test_uki_inspect(x64_uki):
    uki, cmdline, kernel, _, _ = x64_uki
    doc = inspect_json(uki)
    f = formats(doc)
    assert f[:2] == ["uki", "bzimage"]
    assert f[-1] == "elf"
    layer = doc["layers"][0]
    assert layer["sections"] == o.pe_section_names(uki)
    for name in (".linux", ".cmdline", ".initrd", ".ucode"):
        assert name in layer["sections"]
    assert layer["cmdline"] == cmdline
    inner = doc["layers"][1]
    assert num(inner["payload_length"]) == o.bzimage_header(kernel)["payload_length"]


def test_uki_extract(x64_uki, tmp_path):
    uki, cmdline, kernel, ucode, initrd = x64_uki
    assert o.pe_section(uki, ".linux") == kernel  # the material is what we think
    out = extract(uki, tmp_path / "out")
    got = (out / "kernel").read_bytes()
    assert len(got) == len(kernel)
    assert hashlib.sha256(got).digest() == hashlib.sha256(kernel).digest()
    assert (out / "initrd").read_bytes() == ucode + initrd, ".ucode then .initrd"
    assert _cmdline(out) == cmdline.encode()
    assert not (out / "dtb").exists() or (out / "dtb").stat().st_size == 0, "no .dtb went in"


# --------------------------------------------------------------------------
# a multi-profile UKI (sid stub and ukify): profile 0 is the base, profile 1 overrides .cmdline


@pytest.fixture(scope="module")
def multi_uki(tmp_path_factory, bookworm_cloud, initrd_parts):
    ucode, initrd = initrd_parts
    cmdlines = ["console=ttyS0 pykexec.profile=zero", "console=ttyS0 pykexec.profile=one quiet"]
    out = tmp_path_factory.mktemp("uki-multi") / "multi.efi"
    material.build_uki(
        out, linux=bookworm_cloud, stub=material.systemd_stub("sid", "x64", "linux"),
        cmdline=cmdlines[0], initrd=initrd, ucode=ucode,
        base_profile="ID=zero\nTITLE=Profile zero",
        profiles=[{"cmdline": cmdlines[1], "profile": "ID=one\nTITLE=Profile one"}],
    )
    names = o.pe_section_names(out)
    assert names.count(".profile") == 2, names  # the material is what we think
    return out, cmdlines


def test_multi_profile_inspect_lists_profiles(multi_uki):
    uki, cmdlines = multi_uki
    layer = inspect_json(uki)["layers"][0]
    assert layer["format"] == "uki"
    assert layer["sections"] == o.pe_section_names(uki)
    profiles = layer["profiles"]
    assert len(profiles) == 2, profiles
    assert ".cmdline" in profiles[1]["sections"]
    assert profiles[1]["cmdline"] == cmdlines[1]
    # profile 0 has no .cmdline of its own: it uses the base one
    assert profiles[0]["cmdline"] in (cmdlines[0], None)


@pytest.mark.parametrize("args, index", [([], 0), (["--profile", "0"], 0), (["--profile", "1"], 1)])
def test_multi_profile_extract(multi_uki, bookworm_cloud, initrd_parts, tmp_path, args, index):
    uki, cmdlines = multi_uki
    out = extract(uki, tmp_path / "out", *args)
    assert _cmdline(out) == cmdlines[index].encode()
    assert (out / "kernel").read_bytes() == bookworm_cloud.read_bytes()
    ucode, initrd = initrd_parts
    assert (out / "initrd").read_bytes() == ucode.read_bytes() + initrd.read_bytes()


def test_multi_profile_out_of_range_is_a_clean_error(multi_uki, tmp_path):
    uki, _ = multi_uki
    assert_clean_error(run_cli("extract", uki, "-o", tmp_path / "out", "--profile", "2"))


# --------------------------------------------------------------------------
# an add-on


def test_addon_is_uki_addon(tmp_path):
    addon = material.build_addon(tmp_path / "extra.addon.efi", stub=material.systemd_stub("sid", "x64", "addon"),
                                 cmdline="pykexec.addon=1")
    assert ".linux" not in o.pe_section_names(addon)
    doc = inspect_json(addon)
    assert formats(doc)[0] == "uki-addon"
    assert doc["layers"][0]["sections"] == o.pe_section_names(addon)


# --------------------------------------------------------------------------
# an arm64 UKI (sid aa64 stub) whose .linux is a zboot kernel, with a .dtb


def test_aa64_uki_around_zboot(tmp_path):
    efi, image = material.arm64_zboot("gzip")
    dtb = tmp_path / "test.dtb"
    dtb.write_bytes(o.minimal_fdt())
    cmdline = "console=ttyAMA0 pykexec.test=aa64-zboot"
    uki = material.build_uki(tmp_path / "aa64.efi", linux=efi, stub=material.systemd_stub("sid", "aa64", "linux"),
                             cmdline=cmdline, dtb=dtb)
    assert o.pe_section(uki, ".linux") == efi.read_bytes()  # the material is what we think

    doc = inspect_json(uki)
    f = formats(doc)
    assert f[:2] == ["uki", "zboot"], f
    assert f[-1] == "arm64-image"
    assert doc["layers"][0]["cmdline"] == cmdline

    out = extract(uki, tmp_path / "out")
    assert (out / "kernel").read_bytes() == image.read_bytes()
    assert (out / "dtb").read_bytes() == dtb.read_bytes()
    assert _cmdline(out) == cmdline.encode()


def test_aa64_uki_dtbauto_is_chosen_as_systemd_stub_chooses(tmp_path):
    """ukify's --devicetree-auto sections: the arm64 builder takes the first whose root compatible
    matches the running tree's, else the .dtb."""
    from pykexec.api import prepare_file
    from pykexec.boot.arm64 import build_arm64_load
    from pykexec.machine.model import Machine
    from pykexec.machine.ranges import TypedRange
    from tests.unit.machine.dtb import dtb as make_dtb
    from tests.unit.machine.dtb import u32

    def board(compatible: bytes, name: str) -> bytes:
        path = tmp_path / f"{name}.dtb"
        path.write_bytes(make_dtb({"/": {"#address-cells": u32(2), "#size-cells": u32(2),
                                         "compatible": compatible}, "/chosen": {"bootargs": name.encode() + b"\0"}}))
        return path

    efi, _ = material.arm64_zboot("gzip")
    uki = material.build_uki(tmp_path / "aa64.efi", linux=efi, stub=material.systemd_stub("sid", "aa64", "linux"),
                             dtb=board(b"acme,fallback\0", "plain"),
                             dtbauto=[board(b"acme,a\0", "auto-a"), board(b"acme,b\0acme,a\0", "auto-b")])
    assert o.pe_section_names(uki).count(".dtbauto") == 2
    machine = Machine(arch="arm64", memory=(TypedRange(0x40000000, 0x40000000, "System RAM", 0),),
                      memory_source="description")
    for running, want in ((b"acme,b\0", "auto-b"), (b"acme,a\0", "auto-a"), (b"acme,c\0", "plain")):
        sys_root = tmp_path / want / "sys"
        (sys_root / "firmware").mkdir(parents=True)
        (sys_root / "firmware" / "fdt").write_bytes((board(running, "running")).read_bytes())
        load = build_arm64_load(prepare_file(uki), initrd=None, cmdline=None, crash=False, machine=machine,
                                sys_root=sys_root)
        assert load.cmdline == want, (running, load.plan.device_tree)

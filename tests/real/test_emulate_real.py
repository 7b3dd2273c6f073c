"""The EFI emulator on real kernels: each stub unpacks its own kernel, and the capture
at the hand-over is judged against independent oracles.

1. sid's 7.x cloud amd64 bzImage: its stub decompresses the kernel itself.  With
   ``nokaslr`` (so that it neither moves nor relocates the kernel) the captured
   region holds every PT_LOAD of the vmlinux that pykexec's static path
   decompresses, at ``p_paddr - LOAD_PHYSICAL_ADDR``; boot_params carries the
   command line and the initrd given.
2. UKIs built by ukify around that kernel with Debian's systemd-stub 252 (bookworm)
   and 262 (sid): the capture holds the UKI's .cmdline and .initrd, the same in two
   runs with KASLR on; with
   ``--stop-at kernel-stub`` it is taken where systemd-stub starts .linux, and the
   kernel captured is .linux itself.
3. A 6.1 arm64 zboot built from linux-source-6.1 (its stub does LoadFile2 +
   LoadImage + StartImage of the inner Image): the captured Image is the build's
   arch/arm64/boot/Image (but for the stub's own variables, which it stores before
   copying itself: checked by the build's symbols) and /chosen holds the command
   line and the system table whose LINUX_EFI_INITRD_MEDIA table holds the initrd;
   every compression; and inside UKIs (systemd-stub 252 and 262) around it.
4. sid's 7.x arm64 Image: the stub copies itself out of the loaded image; the
   capture is the Image up to its signature (but for the stub's variables).
   bookworm's 6.1 arm64 Image: its stub runs the kernel where it was loaded, and
   the hand-over is caught at primary_entry.
5. bookworm's 6.1 cloud bzImage (6.1.192, whose stub decompresses too, with KASLR):
   the hand-over's boot_params and entry; and the same run twice is identical.
"""

from __future__ import annotations

import argparse
import bisect
import io
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from pykexec import efi
from pykexec.cli import emulate as efi_cli
from pykexec.formats import pe
from pykexec.limits import Limits
from pykexec.formats.prepare import prepare

from .helpers import material

pytestmark = pytest.mark.real

LOAD_PHYSICAL_ADDR = 0x1000000
INITRD = b"070701" + b"pykexec-emulator-initrd " * 4000


def _pt_loads(vmlinux: bytes):
    elf = ELFFile(io.BytesIO(vmlinux))
    return elf, [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]


def _stub_globals_only(captured: bytes, image: bytes, system_table: int) -> list[int]:
    """Offsets where the captured Image differs from the file: only the stub's own globals.

    The arm64 stub stores ``efi_system_table`` (and flags such as ``efi_nokaslr``) in
    its image before it copies the image to its final place, so the copy carries
    them.  Returns the differing offsets after checking that they form one small
    range that starts with the system table's address.
    """
    assert len(captured) == len(image)
    diff = [i for i in range(len(image)) if captured[i] != image[i]] if captured != image else []
    if not diff:
        return diff
    start = diff[0] & ~7
    assert struct.unpack_from("<Q", captured, start)[0] == system_table
    assert struct.unpack_from("<Q", image, start)[0] == 0
    assert diff[-1] < start + 32, [hex(d) for d in diff]
    return diff


def _boot_params_fields(bp: bytes) -> dict:
    u32 = lambda off: struct.unpack_from("<I", bp, off)[0]  # noqa: E731
    return {"ramdisk_image": u32(0x218) | u32(0x0C0) << 32,
            "ramdisk_size": u32(0x21C) | u32(0x0C4) << 32,
            "cmd_line_ptr": u32(0x228) | u32(0x0C8) << 32, "e820_entries": bp[0x1E8]}


# -- material tests/material.py does not make ------------------------------------------
#
# * the 6.1 arm64 zboot of material.arm64_zboot("gzip") rebuilt with
#   CONFIG_BLK_DEV_INITRD=y (tinyconfig leaves it out, and without it the stub
#   never asks for an initrd), in its own build directory, cached like the rest;
# * sid's 7.x arm64 Image, found with material's private sid apt configuration.

KERNEL_ENV = {"ARCH": "arm64", "CROSS_COMPILE": "aarch64-linux-gnu-",
              "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2026",
              "KBUILD_BUILD_USER": "pykexec", "KBUILD_BUILD_HOST": "material",
              "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C"}


def _sid_arm64_image() -> Path:
    m = material
    return m._vmlinuz(m._apt(m._SID), "linux-image-arm64", "arm64")


def _zboot_with_initrd() -> tuple[Path, Path]:
    efi, _image = material.arm64_zboot("gzip")
    src = material.linux_source_tree()
    key = src.parent.name
    final = material.cache_root() / "zboot" / f"arm64_{key}_gzip_initrd"
    if (final / ".complete").exists():
        return final / "vmlinuz.efi", final / "Image"
    with material._lock("emulate-zboot-initrd-" + key):
        if (final / ".complete").exists():
            return final / "vmlinuz.efi", final / "Image"
        build = material.cache_root() / "build" / f"emulate-zboot-initrd_{key}"
        build.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(efi.parent / "config", build / ".config")
        env = dict(os.environ, **KERNEL_ENV)
        make = ["make", "-C", os.fspath(src), f"O={build}", "ARCH=arm64",
                "CROSS_COMPILE=aarch64-linux-gnu-"]
        config = ["bash", os.fspath(src / "scripts" / "config"), "--file",
                  os.fspath(build / ".config")]
        material._run([*config, "-e", "BLK_DEV_INITRD", "-d", "RD_GZIP", "-d", "RD_BZIP2",
                       "-d", "RD_LZMA", "-d", "RD_XZ", "-d", "RD_LZO", "-d", "RD_LZ4",
                       "-d", "RD_ZSTD"], what="scripts/config (BLK_DEV_INITRD)", env=env)
        material._run([*make, "olddefconfig"], what="make olddefconfig", env=env)
        t0 = time.monotonic()
        material._run([*make, f"-j{os.cpu_count() or 2}", "Image", "vmlinuz.efi"],
                      what="make Image vmlinuz.efi (BLK_DEV_INITRD)", env=env, timeout=3600)
        boot = build / "arch" / "arm64" / "boot"
        final.mkdir(parents=True, exist_ok=True)
        for name in ("Image", "vmlinuz.efi"):
            shutil.copyfile(boot / name, final / name)
        shutil.copyfile(build / ".config", final / "config")
        (final / ".complete").write_text(f"built in {time.monotonic() - t0:.0f}s\n")
    return final / "vmlinuz.efi", final / "Image"


def _symbols_at(zboot_efi: Path, offsets: list[int]) -> list[str]:
    """Names of the vmlinux symbols (from the build tree of ``zboot_with_initrd``) that
    hold the given offsets into the Image."""
    key = material.linux_source_tree().parent.name
    vmlinux = material.cache_root() / "build" / f"emulate-zboot-initrd_{key}" / "vmlinux"
    out = subprocess.run(["aarch64-linux-gnu-nm", "-n", os.fspath(vmlinux)], capture_output=True,
                         text=True, check=True).stdout
    table = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            table.append((int(parts[0], 16), parts[2]))
    base = next(addr for addr, name in table if name == "_text")
    addrs = [addr - base for addr, _ in table]
    return sorted({table[bisect.bisect_right(addrs, off) - 1][1] for off in offsets})


# -- 1. sid 7.x amd64 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sid_capture():
    data = material.sid_cloud_bzimage().read_bytes()
    return data, efi.emulate(data, cmdline="console=ttyS0 nokaslr pykexec-marker",
                             initrd=INITRD)


def test_sid_x86_kernel_equals_static_decompression(sid_capture):
    data, cap = sid_capture
    vmlinux = bytes(prepare(data, limits=Limits(), vmlinux=True).vmlinux)
    elf, loads = _pt_loads(vmlinux)
    assert cap.kernel_base == LOAD_PHYSICAL_ADDR
    for seg in loads:
        off = seg["p_paddr"] - LOAD_PHYSICAL_ADDR
        assert cap.kernel[off:off + seg["p_filesz"]] == seg.data(), hex(seg["p_paddr"])
    assert cap.entry == elf.header.e_entry          # startup_64's physical address
    assert cap.report["handover"] == "first instruction outside the loaded images"


def test_sid_x86_boot_params_carry_cmdline_and_initrd(sid_capture):
    _, cap = sid_capture
    assert cap.cmdline == "console=ttyS0 nokaslr pykexec-marker"
    assert cap.initrd == INITRD
    f = _boot_params_fields(cap.boot_params)
    assert f["ramdisk_size"] == len(INITRD) and f["ramdisk_image"] and f["cmd_line_ptr"]
    assert f["e820_entries"] > 0
    assert cap.report["boot_params"]["efi_loader_signature"] == "EL64"
    assert cap.loadable == material.sid_cloud_bzimage().read_bytes()
    assert cap.report["calls"]["BS.ExitBootServices"] == 1
    assert cap.report["instructions"] > 100_000_000


# -- 2. UKIs ------------------------------------------------------------------------

def _emulate_twice(data: bytes, tmp_path, **kwargs):
    """Two runs' written captures (the report without its timing), and the last Capture."""
    runs = []
    for n in range(2):
        cap = efi.emulate(data, **kwargs)
        out = efi.write_capture(cap, tmp_path / f"run{n}")
        runs.append({k: p.read_bytes() for k, p in out.items() if k != "report"})
        report = json.loads(out["report"].read_text())
        report.pop("seconds")
        runs[-1]["report"] = report
    return runs, cap


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_uki_capture_holds_cmdline_and_initrd(suite, tmp_path):
    """With KASLR on.  Two runs are identical: 262 (sid) lays the kernel's image out
    itself, and the RDTSCs there read the virtual counter as those of loaded images do."""
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(INITRD)
    uki = material.build_uki(tmp_path / f"{suite}.efi", linux=material.sid_cloud_bzimage(),
                             stub=material.systemd_stub(suite, "x64", "linux"),
                             cmdline="console=ttyS0 uki-marker", initrd=initrd)
    runs, cap = _emulate_twice(uki.read_bytes(), tmp_path)
    assert runs[0] == runs[1]
    assert cap.cmdline == "console=ttyS0 uki-marker"
    assert cap.initrd is not None and cap.initrd.startswith(INITRD)
    f = _boot_params_fields(cap.boot_params)
    assert f["ramdisk_size"] == len(cap.initrd)
    # the kernel's own stub ran inside systemd-stub and decompressed the kernel
    assert cap.report["instructions"] > 100_000_000
    assert len(cap.kernel) >= 32 << 20


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_uki_stop_at_kernel_stub(suite, tmp_path, capsys):
    """`emulate --stop-at kernel-stub`: where systemd-stub starts .linux, the capture is .linux
    itself (the 7.x zstd bzImage, byte for byte), .cmdline and the initrd its LoadFile2 serves."""
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(INITRD)
    linux = material.sid_cloud_bzimage()
    uki = material.build_uki(tmp_path / f"{suite}.efi", linux=linux,
                             stub=material.systemd_stub(suite, "x64", "linux"),
                             cmdline="console=ttyS0 uki-marker", initrd=initrd)
    parser = argparse.ArgumentParser()
    for flags, kwargs in efi_cli.COMMANDS["emulate"][1]:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args([str(uki), "--stop-at", "kernel-stub", "-o", str(tmp_path / "out")])
    assert efi_cli.HANDLERS["emulate"](args) == 0
    assert "kernel's EFI stub entry at" in capsys.readouterr().out
    out = tmp_path / "out"
    assert (out / "kernel").read_bytes() == linux.read_bytes()
    assert (out / "cmdline").read_text() == "console=ttyS0 uki-marker"
    assert (out / "initrd").read_bytes().startswith(INITRD)
    assert not (out / "boot_params").exists()           # the kernel's stub never built one
    report = json.loads((out / "report.json").read_text())
    assert report["stopped_at"] == "kernel-stub" and report["kernel_stub"]["layers"] == ["bzimage"]
    assert report["entry_offset"] == pe.read_header(linux.read_bytes()).address_of_entry_point


# -- 3. arm64 zboot (6.1) -----------------------------------------------------------

def test_arm64_zboot_61_captures_the_builds_image():
    efi_path, image = _zboot_with_initrd()
    cap = efi.emulate(efi_path.read_bytes(), cmdline="console=ttyAMA0 zboot-marker",
                      initrd=INITRD)
    diff = _stub_globals_only(cap.kernel, image.read_bytes(), cap.report["system_table"])
    # and by the build's symbols, those bytes are the EFI stub's variables
    symbols = _symbols_at(efi_path, diff)
    assert symbols and all(name.startswith("__efistub_") for name in symbols), symbols
    assert cap.arch == "arm64"
    chosen = cap.report["dtb"]["chosen"]
    assert chosen["bootargs"] == "console=ttyAMA0 zboot-marker"
    assert cap.cmdline == "console=ttyAMA0 zboot-marker"
    # 6.1's stub (efi-stub.c: efi_load_initrd(image, ..., NULL)) publishes the initrd
    # in the LINUX_EFI_INITRD_MEDIA configuration table, which the kernel finds
    # through /chosen/linux,uefi-system-table, not in linux,initrd-start/end
    assert cap.initrd == INITRD
    assert cap.report["initrd_source"] == "LINUX_EFI_INITRD_MEDIA configuration table"
    assert chosen["linux,uefi-system-table"] == cap.report["system_table"]
    assert "linux,initrd-start" not in chosen
    calls = cap.report["calls"]
    assert calls["BS.LoadImage"] == 1 and calls["BS.StartImage"] == 1


@pytest.mark.parametrize("compression", ["gzip", "lz4", "lzma", "lzo", "xz", "zstd"])
def test_arm64_zboot_61_every_compression(compression):
    """Each zboot stub decompresses with the kernel's own decompressor for its method."""
    efi_path, image = material.arm64_zboot(compression)
    cap = efi.emulate(efi_path.read_bytes(), cmdline="console=ttyAMA0 zboot-marker")
    _stub_globals_only(cap.kernel, image.read_bytes(), cap.report["system_table"])
    assert cap.cmdline == "console=ttyAMA0 zboot-marker"
    assert cap.report["handover"] == "first instruction outside the loaded images"


@pytest.mark.parametrize("suite", ["bookworm", "sid"])
def test_arm64_uki_around_a_zboot(suite, tmp_path):
    """UKI -> zboot -> Image, unwrapped by the stubs themselves: systemd-stub starts the
    zboot (252: LoadImage; 262: lays it out), which starts its Image, whose stub hands over."""
    efi_path, image = _zboot_with_initrd()
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(INITRD)
    uki = material.build_uki(tmp_path / f"{suite}.efi", linux=efi_path,
                             stub=material.systemd_stub(suite, "aa64", "linux"),
                             cmdline="console=ttyAMA0 uki-zboot-marker", initrd=initrd)
    cap = efi.emulate(uki.read_bytes())
    _stub_globals_only(cap.kernel, image.read_bytes(), cap.report["system_table"])
    assert cap.cmdline == "console=ttyAMA0 uki-zboot-marker"
    assert cap.initrd is not None and cap.initrd.startswith(INITRD)
    early = efi.emulate(uki.read_bytes(), stop_at="kernel-stub")
    assert early.report["stopped_at"] == "kernel-stub"
    assert early.loadable == image.read_bytes()         # the zboot, unwrapped to its Image
    assert early.cmdline == "console=ttyAMA0 uki-zboot-marker"


def test_arm64_zboot_61_tinyconfig_build_without_initrd_support():
    """material's zboot (tinyconfig: no BLK_DEV_INITRD) still hands over its Image."""
    efi_path, image = material.arm64_zboot("gzip")
    cap = efi.emulate(efi_path.read_bytes(), cmdline="console=ttyAMA0", initrd=INITRD)
    _stub_globals_only(cap.kernel, image.read_bytes(), cap.report["system_table"])
    assert cap.cmdline == "console=ttyAMA0"


# -- 4. sid 7.x arm64 Image ---------------------------------------------------------

def test_arm64_sid_image_capture_equals_the_image():
    path = _sid_arm64_image()
    data = path.read_bytes()
    cap = efi.emulate(data, cmdline="console=ttyAMA0 arm64-marker", initrd=INITRD)
    static = bytes(prepare(data, limits=Limits()).kernel)
    # the stub copies _text.._edata; the file adds its Authenticode signature after that
    assert len(cap.kernel) > 32 << 20
    _stub_globals_only(cap.kernel, static[:len(cap.kernel)], cap.report["system_table"])
    hdr = pe.read_header(data)
    assert len(static) - len(cap.kernel) == hdr.certificate_table_size
    assert cap.cmdline == "console=ttyAMA0 arm64-marker"
    # 7.x passes the initrd in the LINUX_EFI_INITRD_MEDIA table, not in /chosen
    assert cap.initrd == INITRD
    assert cap.kernel_base % (2 << 20) == 0


def test_arm64_bookworm_image_run_in_place():
    """6.1's stub runs a 64 KiB-aligned Image where it was loaded (no KASLR seed without
    an RNG protocol): the hand-over never leaves the image, and is caught at primary_entry."""
    data = material.arm64_image().read_bytes()
    cap = efi.emulate(data, cmdline="console=ttyAMA0 arm64-marker", initrd=INITRD)
    image = cap.report["images"][0]
    assert cap.kernel_base == image["base"] and len(cap.report["images"]) == 1
    # booting.rst: x0 is the device tree, x1-x3 are zero; code1 branches to primary_entry
    regs = cap.report["registers"]
    assert regs["x0"] == cap.report["dtb"]["addr"] and regs["x1"] == regs["x2"] == regs["x3"] == 0
    code1 = struct.unpack_from("<I", data, 4)[0]
    assert code1 >> 26 == 0b000101
    assert cap.entry == cap.kernel_base + 4 + 4 * (code1 & 0x3FF_FFFF)
    assert "primary_entry" in cap.report["handover"]
    _stub_globals_only(cap.kernel, data[:len(cap.kernel)], cap.report["system_table"])
    assert len(data) - len(cap.kernel) == pe.read_header(data).certificate_table_size
    assert cap.cmdline == "console=ttyAMA0 arm64-marker" and cap.initrd == INITRD
    assert cap.loadable == cap.kernel


# -- 5. bookworm 6.1 amd64, and determinism ------------------------------------------

def test_bookworm_x86_handover_and_determinism(tmp_path):
    data = material.bookworm_cloud_bzimage().read_bytes()
    runs, cap = _emulate_twice(data, tmp_path, cmdline="console=ttyS0 bookworm-marker",
                               initrd=INITRD)
    assert runs[0] == runs[1]
    f = _boot_params_fields(cap.boot_params)
    assert cap.cmdline == "console=ttyS0 bookworm-marker" and cap.initrd == INITRD
    assert f["ramdisk_size"] == len(INITRD)
    # with KASLR on, the kernel lands somewhere (deterministically) above 16 MiB
    assert cap.kernel_base >= LOAD_PHYSICAL_ADDR and cap.entry >= cap.kernel_base
    assert set(runs[0]) == {"kernel", "initrd", "cmdline", "boot_params", "report"}


# -- the CLI pieces ------------------------------------------------------------------

def test_cli_emulate_writes_the_capture(tmp_path, capsys):
    efi_path, image = material.arm64_zboot("gzip")
    parser = argparse.ArgumentParser()
    for flags, kwargs in efi_cli.COMMANDS["emulate"][1]:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args([str(efi_path), "--cmdline", "console=ttyAMA0", "-o",
                              str(tmp_path / "out"), "--trace"])
    assert efi_cli.HANDLERS["emulate"](args) == 0
    out = capsys.readouterr()
    assert "trace: " in out.err and "BS.ExitBootServices" in out.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    _stub_globals_only((tmp_path / "out" / "kernel").read_bytes(), image.read_bytes(),
                       report["system_table"])
    assert (tmp_path / "out" / "cmdline").read_text() == "console=ttyAMA0"
    assert (tmp_path / "out" / "dtb").read_bytes()[:4] == b"\xd0\x0d\xfe\xed"
    assert report["entry"] and report["instructions"] and report["calls"]

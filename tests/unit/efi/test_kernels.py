"""``--stop-at kernel-stub``: nested kernels recognised by the registry, captured at their entry.

Synthetic images only: the bzImage, arm64 Image and zboot builders of tests/builders.py,
and a small x86 stub (conftest.kernel_starting_stub) that starts its ``.linux`` as
systemd-stub 252 does (LoadImage + StartImage) or as 256+ does (lays it out and calls
its entry point).
"""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("unicorn")

from pykexec import api, efi  # noqa: E402
from pykexec.efi import constants as c  # noqa: E402
from pykexec.efi import kernels  # noqa: E402
from pykexec.efi.machine import Options  # noqa: E402
from pykexec.efi.peload import read_pe  # noqa: E402
from pykexec.efi.services import Firmware  # noqa: E402
from pykexec.errors import EmulationError, StubExited, UsageError  # noqa: E402
from tests import builders as b  # noqa: E402

from .conftest import kernel_starting_stub, pe_image  # noqa: E402

#: the kernel's EFI entry returns EFI_SUCCESS (xor eax, eax; ret): if it runs, the stub Exit()s
KERNEL = b.bzimage(pe=True, head=b"\x31\xc0\xc3".ljust(0x200, b"\xcc"))
INITRD = b"070701" + b"synthetic-initrd " * 300
CMDLINE = "console=ttyS0 kernel-stub-marker"


# -- which images are kernels -------------------------------------------------------------

def test_a_pe_bzimage_is_an_x86_kernel_only():
    k = kernels.recognise(KERNEL, "x86_64", origin="test")
    assert k is not None and k.layers == ("bzimage",) and k.loadable == KERNEL
    assert k.entry == read_pe(KERNEL).entry and k.origin == "test"
    assert kernels.recognise(KERNEL, "arm64") is None


def test_arm64_image_and_zboot_unwrap_to_the_image():
    image = b.arm64_image()
    k = kernels.recognise(image, "arm64")
    assert k is not None and k.layers == ("arm64-image",)
    z = kernels.recognise(b.zboot(image), "arm64")
    assert z is not None and z.layers == ("zboot", "gzip", "arm64-image")
    assert z.loadable == k.loadable                  # kexec_file_load gets the Image itself
    assert kernels.recognise(image, "x86_64") is None


@pytest.mark.parametrize("data", [
    pe_image(b"\xc3"),                               # an EFI application, not a kernel
    b.bzimage(),                                     # a bzImage without a PE header
    KERNEL[:0x300],                                  # truncated
    b"MZ" + bytes(62),
    b"",
], ids=["application", "no-pe-header", "truncated", "mz-only", "empty"])
def test_other_images_are_not_kernels(data):
    assert kernels.recognise(data, "x86_64") is None


def test_a_ukis_linux_section_is_found():
    uki = b.uki(KERNEL)
    found = kernels.in_sections(uki, read_pe(uki), "x86_64")
    assert [k.origin for k in found] == ["section .linux"] and found[0].data == KERNEL


def test_laid_out_compares_the_sections_raw_data():
    k = kernels.recognise(KERNEL, "x86_64")
    memory = bytearray(0x10000 + k.size_of_image)
    for s in k.info.sections:
        memory[0x10000 + s.virtual_address:0x10000 + s.virtual_address + s.raw_size] = \
            KERNEL[s.raw_offset:s.raw_offset + s.raw_size]
    read = lambda addr, n: bytes(memory[addr:addr + n])  # noqa: E731
    assert k.laid_out_at(read, 0x10000)
    assert not k.laid_out_at(read, 0x10000 - 0x1000)
    memory[0x10000 + k.entry] ^= 0xFF
    assert not k.laid_out_at(read, 0x10000)


def test_a_layout_at_the_section_alignment_is_watched():
    """systemd-stub 262 on arm64 allocates SizeOfImage + SectionAlignment, frees the slack
    and lays the Image out at the aligned address inside."""
    image = b.pe([(".text", b"\x1f\x20\x03\xd5" * 32), (".data", b"arm64-data" * 8)],
                 machine=b.IMAGE_FILE_MACHINE_ARM64, dos=b.arm64_image()[:0x40],
                 section_alignment=0x10000)
    k = kernels.recognise(image, "arm64")
    assert k is not None and k.info.section_alignment == 0x10000
    fw = Firmware("arm64", Options(memory=256 << 20, stop_at="kernel-stub"))
    fw.kernel_sections = [k]
    fw._watch_layouts(0x7BEFF000, -(-k.size_of_image // c.PAGE) + 0x10)
    assert 0x7BF00000 + k.entry in fw.entry_watches
    fw._watch_layouts(0x6000000, 1)                       # too small for it: not watched
    assert not any(addr < 0x7BEFF000 for addr in fw.entry_watches)


# -- the capture ----------------------------------------------------------------------------

@pytest.mark.parametrize("lay_out", [False, True], ids=["start-image", "laid-out"])
def test_capture_at_the_kernel_stub_entry(lay_out):
    lines = []
    cap = efi.emulate(kernel_starting_stub(KERNEL, cmdline=CMDLINE, initrd=INITRD,
                                           lay_out=lay_out),
                      stop_at="kernel-stub", trace=lines.append)
    assert cap.kernel == KERNEL and cap.loadable == KERNEL
    assert cap.cmdline == CMDLINE
    assert cap.initrd == INITRD              # served by the stub's own LoadFile2, under emulation
    r = cap.report
    assert r["stopped_at"] == "kernel-stub"
    assert r["kernel_stub"]["layers"] == ["bzimage"]
    assert cap.entry_offset == read_pe(KERNEL).entry
    assert r["initrd_source"].startswith("the guest's LoadFile2 on handle")
    assert cap.boot_params is None and cap.dtb is None
    if lay_out:
        assert "the section .linux kernel the stub laid out" in r["handover"]
        assert r["kernel_stub"]["origin"] == "section .linux"
        assert r["kernel_stub"]["image_handle"] == r["images"][0]["handle"]   # its own handle
    else:
        assert "StartImage of buffer" in r["handover"]
        assert r["kernel_stub"]["origin"] == "LoadImage of buffer"
    assert any("<kernel-stub capture>() = EFI_SUCCESS" in line for line in lines)


def test_the_default_stop_runs_the_kernels_stub():
    """stop_at="kernel" (emulate's default) does not stop early: the kernel's entry runs."""
    with pytest.raises(StubExited) as e:
        efi.emulate(kernel_starting_stub(KERNEL))
    assert "called Exit(EFI_SUCCESS)" in str(e.value)     # what the kernel's entry returned


def test_emulate_for_load_stops_at_the_kernel_stub():
    cap = efi.emulate_for_load(kernel_starting_stub(KERNEL, cmdline=CMDLINE, initrd=INITRD),
                               initrd=None, cmdline=None, arch="x86_64")
    assert cap.report["stopped_at"] == "kernel-stub" and cap.loadable == KERNEL


def test_the_emulators_own_initrd_is_used_directly():
    """With --initrd the LINUX_EFI_INITRD_MEDIA path is the emulator's (the stub's own
    install then fails with EFI_ALREADY_STARTED): no guest call is needed."""
    cap = efi.emulate(kernel_starting_stub(KERNEL, initrd=b"stub's"), initrd=INITRD,
                      stop_at="kernel-stub")
    assert cap.initrd == INITRD
    assert cap.report["initrd_source"] == "the emulator's LoadFile2 (--initrd)"


def test_no_initrd_provider():
    cap = efi.emulate(kernel_starting_stub(KERNEL, no_initrd=True), stop_at="kernel-stub")
    assert cap.initrd is None and cap.report["initrd_source"] is None
    assert cap.cmdline == "console=ttyS0 stub-marker"


def test_a_failing_initrd_loadfile2_is_an_emulation_error():
    with pytest.raises(EmulationError) as e:
        efi.emulate(kernel_starting_stub(KERNEL, broken_initrd=True), stop_at="kernel-stub")
    err = e.value
    assert "the initrd's LoadFile2 failed" in str(err) and "EFI_DEVICE_ERROR" in str(err)
    assert err.pc is not None


def test_no_nested_kernel_falls_back_to_the_handover():
    """An image that never starts a kernel runs as without --stop-at (here: it Exit()s)."""
    from .test_emulator import hello_then_exit
    with pytest.raises(StubExited):
        efi.emulate(pe_image(hello_then_exit("no kernel here")), stop_at="kernel-stub")


def test_stop_at_is_checked():
    with pytest.raises(UsageError):
        efi.emulate(pe_image(b"\xc3"), stop_at="somewhere")


def test_the_kernels_cmdline_stops_at_nul_or_newline():
    """libstub efi_convert_cmdline: UTF-16 up to LoadOptionsSize, a NUL or a newline."""
    fw = Firmware("x86_64", Options(memory=256 << 20))
    img = fw.load_image(pe_image(b"\xc3"), parent=0, name="t.efi", file_path_dp=None)
    assert fw.kernel_cmdline(img.handle) is None                      # no LoadOptions
    fw.set_load_options(img, "root=/dev/vda ro\nignored")
    assert fw.kernel_cmdline(img.handle) == "root=/dev/vda ro"
    li = img.loaded_image
    fw.put32(li + c.LI_LOAD_OPTIONS_SIZE, 2 * len("root=/dev"))       # no NUL within the size
    assert fw.kernel_cmdline(img.handle) == "root=/dev"
    assert fw.kernel_cmdline(0x1234) is None                          # not a handle


def test_load_via_emulator_says_so():
    """The load's layers start with the emulator's capture, so `pykexec load` shows it."""
    prepared = api.prepare_via_emulator(
        kernel_starting_stub(KERNEL, cmdline=CMDLINE, initrd=INITRD), arch="x86_64")
    assert [x.format for x in prepared.layers] == ["emulator", "bzimage"]
    first = prepared.layers[0]
    assert first.stopped_at == "kernel-stub" and first.to_json()["stopped_at"] == "kernel-stub"
    assert bytes(prepared.kernel) == KERNEL
    assert prepared.cmdline == CMDLINE and prepared.initrds == (INITRD,)
    assert struct.unpack_from("<I", bytes(prepared.kernel), 0x202)[0] == 0x53726448   # HdrS

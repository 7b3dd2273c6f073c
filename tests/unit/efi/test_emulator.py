"""The emulated firmware on tiny PE images built here: services, bounds, trace, LoadOptions."""

from __future__ import annotations

import inspect
import os
import struct
import subprocess
import sys

import pytest

pytest.importorskip("unicorn")

from pykexec import efi  # noqa: E402
from pykexec.efi import constants as c  # noqa: E402
from pykexec.efi.handles import Node, vendor_media_path  # noqa: E402
from pykexec.efi.machine import Options  # noqa: E402
from pykexec.efi.memory import EfiStatusError  # noqa: E402
from pykexec.efi.services import Firmware  # noqa: E402
from pykexec.errors import EmulationFault, EmulationLimit, StubExited  # noqa: E402

from .conftest import TEXT_RVA, pe_image  # noqa: E402

JMP_SELF = b"\xeb\xfe"
NULL_READ = b"\x48\x8b\x04\x25\x00\x00\x00\x00"          # mov rax, [0]


def call(service, *args):
    """Call a service as the dispatcher does: errors become their status, generators run."""
    try:
        return _call(service(*args))
    except EfiStatusError as e:
        return e.status


def _call(result):
    if inspect.isgenerator(result):
        try:
            next(result)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("the service wanted to call guest code")
    return result


def hello_then_exit(text: str = "hi", status: int = c.EFI_UNSUPPORTED) -> bytes:
    """OutputString(text) on ConOut, then BS.Exit(ImageHandle, status)."""
    code = bytearray()
    code += bytes.fromhex("53 4154 4883ec28 4989cc 4889d3")       # push rbx/r12; sub rsp; save
    code += bytes.fromhex("488b4b40")                              # rcx = ST->ConOut
    lea_at = len(code)
    code += bytes.fromhex("488d15") + b"\0\0\0\0"                 # rdx = &msg
    code += bytes.fromhex("ff5108")                                # ConOut->OutputString
    code += bytes.fromhex("488b4360 4c89e1 48ba") + struct.pack("<Q", status)
    code += bytes.fromhex("4531c0 4531c9")
    code += bytes.fromhex("ff90") + struct.pack("<I", 24 + 8 * c.BOOT_SERVICES.index("Exit"))
    code += JMP_SELF
    msg = len(code)
    code += (text + "\0").encode("utf-16-le")
    struct.pack_into("<i", code, lea_at + 3, msg - (lea_at + 7))
    return bytes(code)


@pytest.fixture
def fw():
    return Firmware("x86_64", Options(memory=256 << 20))


def scratch(fw, size=0x1000):
    return fw.alloc(c.BS_DATA, size)


def test_system_table_layout(fw):
    assert fw.u64(fw.st) == c.SYSTEM_TABLE_SIGNATURE
    assert fw.u64(fw.st + c.ST_BOOT_SERVICES) == fw.bs
    assert fw.u64(fw.st + c.ST_RUNTIME_SERVICES) == fw.rt
    assert fw.utf16(fw.u64(fw.st + c.ST_FIRMWARE_VENDOR)) == "pykexec"
    assert fw.u64(fw.bs) == c.BOOT_SERVICES_SIGNATURE
    n = fw.u64(fw.st + c.ST_NUMBER_OF_TABLE_ENTRIES)
    tables = fw.u64(fw.st + c.ST_CONFIGURATION_TABLE)
    guids = [fw.read(tables + 24 * i, 16) for i in range(n)]
    assert c.RT_PROPERTIES_TABLE in guids
    props = fw.u64(tables + 24 * guids.index(c.RT_PROPERTIES_TABLE) + 16)
    assert struct.unpack("<HHI", fw.read(props, 8)) == (1, 8, 0)   # SetVirtualAddressMap: no


def test_get_memory_map_handshake_and_key(fw):
    buf = scratch(fw, 0x4000)
    size, key, dsize, dver, mmap = buf, buf + 8, buf + 16, buf + 24, buf + 0x100
    fw.put64(size, 0)
    assert call(fw.bs_GetMemoryMap, size, 0, key, dsize, dver) == c.EFI_BUFFER_TOO_SMALL
    need = fw.u64(size)
    assert need == c.DESCRIPTOR_SIZE * len(fw.memory.descs) and fw.u64(dsize) == 48
    fw.put64(size, need + 48)
    assert call(fw.bs_GetMemoryMap, size, mmap, key, dsize, dver) == c.EFI_SUCCESS
    key1 = fw.u64(key)
    raw = fw.read(mmap, need)
    first = struct.unpack_from("<IIQQQQ", raw, 0)
    assert (first[0], first[2]) == (c.RESERVED, 0)
    types = [struct.unpack_from("<I", raw, i)[0] for i in range(0, need, 48)]
    assert types == [d.type for d in fw.memory.descs]
    # an allocation changes the key; ExitBootServices refuses the old one
    assert call(fw.bs_AllocatePages, c.ALLOCATE_ANY_PAGES, c.LOADER_DATA, 1, buf + 32) \
        == c.EFI_SUCCESS
    assert fw.memory.key != key1
    assert call(fw.bs_ExitBootServices, 0, key1) == c.EFI_INVALID_PARAMETER
    assert call(fw.bs_GetMemoryMap, size, 0, key, dsize, dver) == c.EFI_BUFFER_TOO_SMALL


def test_allocate_pages_honours_address_and_max(fw):
    buf = scratch(fw)
    fw.put64(buf, 0x1000000)
    assert call(fw.bs_AllocatePages, c.ALLOCATE_ADDRESS, c.LOADER_CODE, 4, buf) == c.EFI_SUCCESS
    assert fw.u64(buf) == 0x1000000
    assert call(fw.bs_AllocatePages, c.ALLOCATE_ADDRESS, c.LOADER_CODE, 4, buf) == c.EFI_NOT_FOUND
    fw.put64(buf, 0x7FFFFFF)
    assert call(fw.bs_AllocatePages, c.ALLOCATE_MAX_ADDRESS, c.LOADER_DATA, 2, buf) == c.EFI_SUCCESS
    assert fw.u64(buf) == 0x8000000 - 0x2000
    assert call(fw.bs_FreePages, 0x1000000, 4) == c.EFI_SUCCESS
    assert call(fw.bs_FreePages, 0x1000000, 4) == c.EFI_NOT_FOUND
    assert call(fw.bs_FreePool, 0) == c.EFI_INVALID_PARAMETER


def test_load_options_are_utf16_and_loaded_image_is_true(fw):
    img = fw.load_image(pe_image(b"\xc3"), parent=0, name="t.efi", file_path_dp=None)
    fw.set_load_options(img, "console=ttyS0 é")
    li = img.loaded_image
    size = fw.u32(li + c.LI_LOAD_OPTIONS_SIZE)
    raw = fw.read(fw.u64(li + c.LI_LOAD_OPTIONS), size)
    assert raw == "console=ttyS0 é\0".encode("utf-16-le")
    assert fw.u64(li + c.LI_IMAGE_BASE) == img.base and fw.u64(li + c.LI_IMAGE_SIZE) == 0x2000
    assert fw.u64(li + c.LI_SYSTEM_TABLE) == fw.st
    assert fw.read(img.base, 2) == b"MZ"                  # headers are mapped
    assert fw.read(img.base + TEXT_RVA, 1) == b"\xc3"
    assert img.entry == img.base + TEXT_RVA


def test_base_relocations_are_applied(fw):
    image_base = 0x140000000
    code = b"\xc3" + bytes(7) + struct.pack("<Q", image_base + 0x1234)
    img = fw.load_image(pe_image(code, relocs=[TEXT_RVA + 8]), parent=0, name="r.efi",
                        file_path_dp=None)
    assert fw.u64(img.base + TEXT_RVA + 8) == img.base + 0x1234


def test_load_image_refuses_other_machines(fw):
    parent = fw.load_image(pe_image(b"\xc3"), parent=0, name="p.efi", file_path_dp=None)
    child = pe_image(b"\xc3", machine=c.MACHINE_AA64)
    buf = scratch(fw, 0x4000)
    fw.write(buf + 0x100, child)
    fw.record = None
    result = call(fw.bs_LoadImage, 0, parent.handle, 0, buf + 0x100, len(child), buf)
    assert result == c.EFI_UNSUPPORTED


def test_locate_device_path_advances_the_path(fw):
    vendor = c.guid("01234567-89ab-cdef-0123-456789abcdef")
    dp = vendor_media_path(vendor)
    buf = scratch(fw, 0x1000)
    fw.write(buf + 0x100, dp)
    h = fw.handles.install(0, c.DEVICE_PATH_PROTOCOL, buf + 0x100)
    fw.handles.install(h, c.LOAD_FILE2_PROTOCOL, buf + 0x200)
    longer = dp[:-4] + Node(c.DP_MEDIA, 0x04, "x\0".encode("utf-16-le")).raw + dp[-4:]
    fw.write(buf + 0x400, longer)
    fw.write(buf + 0x800, c.LOAD_FILE2_PROTOCOL)
    fw.put64(buf, buf + 0x400)
    assert call(fw.bs_LocateDevicePath, buf + 0x800, buf, buf + 8) == c.EFI_SUCCESS
    assert fw.u64(buf + 8) == h
    assert fw.u64(buf) == buf + 0x400 + len(dp) - 4      # at the File() node
    fw.write(buf + 0x800, c.LOAD_FILE_PROTOCOL)
    fw.put64(buf, buf + 0x400)
    assert call(fw.bs_LocateDevicePath, buf + 0x800, buf, buf + 8) == c.EFI_NOT_FOUND


def test_initrd_load_file2_handshake():
    fw = Firmware("x86_64", Options(memory=256 << 20), initrd=b"INITRD" * 100)
    buf = scratch(fw, 0x2000)
    fw.write(buf + 0x100, c.LOAD_FILE2_PROTOCOL)
    fw.write(buf + 0x200, vendor_media_path(c.LINUX_EFI_INITRD_MEDIA))
    fw.put64(buf, buf + 0x200)
    assert call(fw.bs_LocateDevicePath, buf + 0x100, buf, buf + 8) == c.EFI_SUCCESS
    fw.put64(buf + 16, 0)
    assert call(fw.initrd_LoadFile, 0, 0, 0, buf + 16, 0) == c.EFI_BUFFER_TOO_SMALL
    assert fw.u64(buf + 16) == 600
    assert call(fw.initrd_LoadFile, 0, 0, 0, buf + 16, buf + 0x400) == c.EFI_SUCCESS
    assert fw.read(buf + 0x400, 600) == b"INITRD" * 100
    assert call(fw.initrd_LoadFile, 0, 0, 1, buf + 16, buf + 0x400) == c.EFI_UNSUPPORTED


def test_unsupported_protocols_answer_not_found(fw):
    buf = scratch(fw)
    fw.write(buf + 0x100, c.RNG_PROTOCOL)
    assert call(fw.bs_LocateProtocol, buf + 0x100, 0, buf) == c.EFI_NOT_FOUND
    assert call(fw.bs_LocateHandleBuffer, c.BY_PROTOCOL, buf + 0x100, 0, buf, buf + 8) \
        == c.EFI_NOT_FOUND
    name = buf + 0x200
    fw.write(name, "SecureBoot\0".encode("utf-16-le"))
    fw.write(buf + 0x300, c.guid("8be4df61-93ca-11d2-aa0d-00e098032b8c"))
    fw.put64(buf + 16, 1)
    assert call(fw.rt_GetVariable, name, buf + 0x300, 0, buf + 16, buf + 0x400) == c.EFI_NOT_FOUND
    assert call(fw.rt_SetVirtualAddressMap, 0, 48, 1, 0) == c.EFI_UNSUPPORTED


def test_infinite_loop_stops_with_a_clear_error():
    with pytest.raises(EmulationLimit) as e:
        efi.emulate(pe_image(JMP_SELF), max_instructions=1_000_000)
    err = e.value
    assert "instruction limit of 1000000" in str(err)
    assert err.pc is not None and f"pc {err.pc:#x}" in str(err)
    assert err.instructions >= 1_000_000


def test_progress_is_reported_at_checkpoints_and_at_the_end():
    from pykexec.efi.machine import CHECKPOINT_BLOCKS
    # mov ecx, 2^26; l: dec ecx; jnz l; mov eax, 7; ret: one block an iteration
    loop = bytes.fromhex("b900000004 ffc9 75fc b807000000 c3")
    calls = []
    with pytest.raises(StubExited) as e:
        efi.emulate(pe_image(loop), progress=lambda *a: calls.append(a))
    assert "returned 0x7 " in str(e.value)
    assert len(calls) == (1 << 26) // CHECKPOINT_BLOCKS
    assert all(what == "emulating" and total is None for what, _, total in calls)
    assert [n for _, n, _ in calls] == sorted(n for _, n, _ in calls)
    assert calls[0][1] >= 2 * CHECKPOINT_BLOCKS      # two instructions a block


def test_time_limit():
    with pytest.raises(EmulationLimit) as e:
        efi.emulate(pe_image(JMP_SELF), max_seconds=0.5)
    assert "time limit" in str(e.value)


def test_fault_names_the_access_and_pc():
    with pytest.raises(EmulationFault) as e:
        efi.emulate(pe_image(NULL_READ))
    assert "read of 8 bytes at 0x0, the NULL page" in str(e.value)
    assert e.value.pc % 0x1000 == TEXT_RVA % 0x1000


def test_exit_and_trace():
    lines = []
    with pytest.raises(StubExited) as e:
        efi.emulate(pe_image(hello_then_exit("hi")), trace=lines.append)
    assert "called Exit(EFI_UNSUPPORTED)" in str(e.value)
    assert "ConOut.OutputString('hi') = EFI_SUCCESS" in str(e.value)   # the last calls
    assert lines[0] == "[1] ConOut.OutputString('hi') = EFI_SUCCESS"
    assert lines[1].startswith("[2] BS.Exit(0x") and "EFI_UNSUPPORTED" in lines[1]


def test_entry_returning_is_reported():
    with pytest.raises(StubExited) as e:
        efi.emulate(pe_image(b"\x31\xc0\xc3"))            # return EFI_SUCCESS
    assert "entry point returned EFI_SUCCESS" in str(e.value)


def test_not_a_pe_is_a_format_error():
    from pykexec.errors import FormatError
    with pytest.raises(FormatError):
        efi.emulate(b"not a PE image" * 10)


def parent_starting(child: bytes) -> bytes:
    """LoadImage(child from a buffer) + StartImage, then Exit(ImageHandle, what StartImage gave)."""
    bs = lambda name: struct.pack("<I", 24 + 8 * c.BOOT_SERVICES.index(name))  # noqa: E731
    code = bytearray(bytes.fromhex("53 4154 4155 4883ec40 4989cc 4889d3 4c8b6b60"))
    code += bytes.fromhex("31c9 4c89e2 4531c0")
    lea_at = len(code)
    code += bytes.fromhex("4c8d0d") + b"\0\0\0\0"                   # r9 = &child
    code += bytes.fromhex("48c7442420") + struct.pack("<I", len(child))
    code += bytes.fromhex("488d442438 4889442428")
    code += bytes.fromhex("41ff95") + bs("LoadImage")
    code += bytes.fromhex("488b4c2438 31d2 4531c0")
    code += bytes.fromhex("41ff95") + bs("StartImage")
    code += bytes.fromhex("4c89e1 4889c2 4531c0 4531c9")
    code += bytes.fromhex("41ff95") + bs("Exit")
    code += JMP_SELF
    code += bytes(-len(code) % 16)
    struct.pack_into("<i", code, lea_at + 3, len(code) - (lea_at + 7))
    return bytes(code) + child


def test_start_image_and_exit_unwind_to_the_parent():
    child = pe_image(hello_then_exit("child", c.EFI_ACCESS_DENIED))
    lines = []
    with pytest.raises(StubExited) as e:
        efi.emulate(pe_image(parent_starting(child)), trace=lines.append)
    # the parent got the child's Exit status back from StartImage, with its own
    # registers (r12 = its ImageHandle) restored, and exited with it
    assert "called Exit(EFI_ACCESS_DENIED)" in str(e.value)
    text = "\n".join(lines)
    assert "BS.LoadImage(parent 0x" in text and "-> handle 0x" in text
    assert "ConOut.OutputString('child')" in text
    start = [line for line in lines if "BS.StartImage(" in line]
    assert len(start) == 1 and "= EFI_ACCESS_DENIED" in start[0]
    exits = [line for line in lines if "BS.Exit(" in line]
    assert len(exits) == 2 and exits[0] != exits[1]      # the child's, then the parent's handle


# -- x86_64 paging: identity-mapped, executable only where code runs ------------------

from pykexec.efi.machine import OUTSIDE, PAGE_TABLES_AT  # noqa: E402

# AllocatePages(AnyPages, LoaderData, 3, &buf); at buf, buf+4K and buf+8K "mov eax, N; ret"
# for N = 1, 2, 4; call the three; return their sum (7).  Three pages, three page faults.
THREE_PAGES_OF_CODE = bytes.fromhex(
    "53 4154 4155 4883ec30 488b5a60"                         # save; rbx = ST->BootServices
    "31c9 ba02000000 41b803000000 4c8d4c2428 ff5328"         # AllocatePages(0, 2, 3, &buf)
    "4c8b642428"                                             # r12 = buf
    "41c70424b8010000 6641c744240400c3"                      # [buf] = mov eax, 1; ret
    "41c7842400100000b8020000 6641c784240410000000c3"        # [buf+4K] = mov eax, 2; ret
    "41c7842400200000b8040000 6641c784240420000000c3"        # [buf+8K] = mov eax, 4; ret
    "4531ed 41ffd4 4901c5"                                   # r13 = buf()
    "498d842400100000 ffd0 4901c5"                           # r13 += (buf+4K)()
    "498d842400200000 ffd0 4901c5"                           # r13 += (buf+8K)()
    "4c89e8 4883c430 415d 415c 5b c3")                       # return r13

# AllocatePages(AnyPages, LoaderData, 1, &buf); [buf] = "rdtsc; shl rdx, 32; or rax, rdx;
# ret"; return buf(): code no LoadImage produced reads the time-stamp counter.
RDTSC_IN_AN_ALLOCATION = bytes.fromhex(
    "53 4154 4155 4883ec30 488b5a60"                         # save; rbx = ST->BootServices
    "31c9 ba02000000 41b801000000 4c8d4c2428 ff5328"         # AllocatePages(0, 2, 1, &buf)
    "4c8b642428"                                             # r12 = buf
    "48b80f3148c1e2204809 49890424 6641c7442408d0c3"         # [buf] = the code above
    "41ffd4"                                                 # rax = buf()
    "4883c430 415d 415c 5b c3")


def test_rdtsc_in_code_laid_out_at_run_time_reads_the_virtual_counter():
    """As systemd-stub 256+ lays the kernel out itself: the RDTSC there is found when its
    page is first fetched, and reads the same virtual counter in every run."""
    values = [int(returned(RDTSC_IN_AN_ALLOCATION), 16) for _ in range(2)]
    assert values[0] == values[1]
    assert 1_000_000_000 <= values[0] < 1_000_000_000 + (64 << 20)   # 1 GHz from the blocks run


# M = AllocatePages(4); A = AllocatePages(1); [A] = ret; A(); FreePages(A, 1);
# GetMemoryMap(&size, M, &key, ...); ExitBootServices(ImageHandle, key); rsi = M; jmp A.
# A ran code before ExitBootServices, but was freed: jumping there is the hand-over.
HANDOVER_TO_FREED_CODE = bytes.fromhex(
    "53 4154 4155 4156 4157 4883ec60 4989ce 488b5a60"
    "31c9 ba02000000 41b804000000 4c8d4c2438 ff5328 4c8b6c2438"     # r13 = M
    "31c9 ba02000000 41b801000000 4c8d4c2438 ff5328 4c8b642438"     # r12 = A
    "41c60424c3 41ffd4"                                             # [A] = ret; A()
    "4c89e1 ba01000000 ff5330"                                      # FreePages(A, 1)
    "48c744243000400000 488d442448 4889442420 4c8d4c2440"           # size = 16K, &ver, &dsize
    "4c8d442438 4c89ea 488d4c2430 ff5338"                           # GetMemoryMap
    "4c89f1 488b542438 ff93e8000000"                                # ExitBootServices
    "4c89ee 41ffe4")                                                # rsi = M; jmp A


def _run(code: bytes, memory: int = 256 << 20):
    fw = Firmware("x86_64", Options(memory=memory, max_instructions=10_000_000))
    image = fw.load_image(pe_image(code), parent=0, name="t.efi", file_path_dp=None)
    return fw, image


def returned(code: bytes, machine: int = 0x8664) -> str:
    with pytest.raises(StubExited) as e:
        efi.emulate(pe_image(code, machine=machine), memory=256 << 20)
    return str(e.value).split("entry point returned ")[1].split()[0]


def test_x86_firmware_pages_as_uefi_does():
    mov_cr = lambda r: bytes([0x0F, 0x20, 0xC0 | r << 3, 0xC3])     # noqa: E731 - mov rax, crN; ret
    assert int(returned(mov_cr(0)), 16) == 0x80010033                # PG WP NE ET MP PE
    assert int(returned(mov_cr(3)), 16) == PAGE_TABLES_AT
    cr4 = int(returned(mov_cr(4)), 16)
    assert cr4 & 0x20 and not cr4 & 0x1000                          # PAE, 4-level (no LA57)
    rdmsr_efer = bytes.fromhex("b9800000c0 0f32 48c1e220 4809d0 c3")
    assert int(returned(rdmsr_efer), 16) & 0xD00 == 0xD00           # NXE, LMA, LME
    fw = Firmware("x86_64", Options(memory=256 << 20))
    d = fw.memory.find(PAGE_TABLES_AT)
    assert (d.start, d.type) == (PAGE_TABLES_AT, c.BS_DATA)
    assert fw.paging is not None


def a64(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}I", *words)


def test_arm64_firmware_runs_with_the_mmu_on():
    """UEFI 2.10 2.3.6: the MMU on, identity mapped (TTBR0_EL1 -> our level 1 table)."""
    from pykexec.efi.cpu import Arm64
    ret = 0xD65F03C0
    sctlr = int(returned(a64(0xD5381000, ret), 0xAA64), 16)             # mrs x0, sctlr_el1
    assert sctlr & Arm64.SCTLR_MMU == Arm64.SCTLR_MMU                   # M, C, I
    assert int(returned(a64(0xD5382000, ret), 0xAA64), 16) == PAGE_TABLES_AT + 0x1000
    assert int(returned(a64(0xD5382040, ret), 0xAA64), 16) == Arm64.TCR


# entry: mov x9, x30; bl +0x1000; bl +0x2000; add x0, x0, x1; mov x30, x9; ret
# +0x1000: mov x0, #1; ret        +0x2000: mov x1, #2; ret
THREE_ARM64_PAGES = (a64(0xAA1E03E9, 0x940003FF, 0x940007FE, 0x8B010000, 0xAA0903FE, 0xD65F03C0)
                     .ljust(0x1000, b"\0") + a64(0xD2800020, 0xD65F03C0).ljust(0x1000, b"\0")
                     + a64(0xD2800041, 0xD65F03C0))


def test_arm64_pages_become_executable_as_code_is_fetched_from_them():
    fw = Firmware("arm64", Options(memory=256 << 20, max_instructions=10_000_000))
    image = fw.load_image(pe_image(THREE_ARM64_PAGES, machine=0xAA64), parent=0, name="t.efi",
                          file_path_dp=None)
    with pytest.raises(StubExited) as e:
        fw.start(image)
    assert "returned 0x3 " in str(e.value)          # three prefetch aborts, each resumed
    text = image.base + TEXT_RVA
    assert {text, text + 0x1000, text + 0x2000} <= fw.code_pages
    assert all(fw.paging.executable(p) for p in fw.code_pages)
    assert not fw.paging.executable(text + 0x3000)


@pytest.mark.parametrize("code, what", [
    (a64(0xD2C00081, 0xF9400020), "read of 8 bytes at 0x400000000, outside guest RAM"),
    (a64(0xD2C00081, 0xF9000020), "write of 8 bytes at 0x400000000, outside guest RAM"),
    (a64(0xD2C02001, 0xF9400020), "read of 8 bytes at 0x10000000000, outside guest RAM"),
    (a64(0xD2C00081, 0xD61F0020), "instruction fetch of 4 bytes at 0x400000000, outside guest RAM"),
    (a64(0xD2800001, 0xF9400020), "read of 8 bytes at 0x0, the NULL page"),
    (a64(0xD2800001, 0xD61F0020), "instruction fetch of 4 bytes at 0x0, the NULL page"),
], ids=["read", "write", "read-beyond-512GiB", "fetch", "null-read", "null-fetch"])
def test_arm64_wild_accesses_fail_as_they_did_with_the_mmu_off(code, what):
    """x1 = 16 GiB (1 TiB, 0); ldr x0, [x1] / str x0, [x1] / br x1."""
    with pytest.raises(EmulationFault) as e:
        efi.emulate(pe_image(code, machine=0xAA64), memory=256 << 20)
    assert f"emulated code faulted: {what}" in str(e.value)


def test_code_copied_into_allocations_runs_before_exit_boot_services():
    fw, image = _run(THREE_PAGES_OF_CODE)
    with pytest.raises(StubExited) as e:
        fw.start(image)
    # three separate page faults were resolved (unicorn would make the second a
    # double fault and stop the CPU at the third)
    assert "returned 0x7 " in str(e.value)
    buf = min(fw.code_pages)
    assert sorted(fw.code_pages) == sorted([buf, buf + 0x1000, buf + 0x2000,
                                            image.entry & ~0xFFF, fw.trap_base])
    assert all(fw.paging.executable(p) for p in fw.code_pages)
    assert fw.memory.find(buf).type == c.LOADER_DATA


def test_only_pages_code_ran_from_are_executable():
    fw, image = _run(THREE_PAGES_OF_CODE)
    with pytest.raises(StubExited):
        fw.start(image)
    data = [fw.stack_top - 8, fw.st, image.base, fw.pools.allocate(c.BS_DATA, 16)]
    assert not any(fw.paging.executable(a) for a in data)
    assert fw.paging.executable(image.entry) and fw.paging.executable(fw.trap_base)
    # and the tables say so to the CPU: XD in the stack's entry, none in the code's
    assert leaf_entry(fw, fw.stack_top - 8) >> 63 == 1
    assert leaf_entry(fw, image.entry) >> 63 == 0


def leaf_entry(fw, addr: int) -> int:
    """The page-directory or page-table entry that maps ``addr`` (read from guest memory)."""
    entry = fw.u64(fw.paging.pds + 8 * (addr >> 21))
    if not entry & 0x80:
        entry = fw.u64((entry & 0xFFFFFFFFFF000) + 8 * (addr >> 12 & 511))
    assert entry & 1
    return entry


def test_fetch_outside_the_images_after_exit_boot_services_is_the_handover():
    fw, image = _run(HANDOVER_TO_FREED_CODE)
    handover = fw.start(image)
    target = handover["pc"]
    assert handover["how"] == OUTSIDE
    assert fw.memory.find(target).type == c.CONVENTIONAL                # A, freed
    assert target in fw.code_pages                                      # ran before EBS
    assert handover["registers"]["rsi"] == fw.memory.allocation_containing(
        handover["registers"]["rsi"])[0]                                # M
    assert fw._block_hook is None                # the page fault found it, not a block hook
    assert fw.call_counts["BS.ExitBootServices"] == 1


# As HANDOVER_TO_FREED_CODE, but A's code is "nop; nop; nop; ret" at A+0xff0, and A's last
# 16 bytes are nops by the hand-over.  Counting instructions then translates the block
# at A+0xff0 again: it now runs on into A+0x1000, a page no code ran from.
REWRITTEN_CODE = bytes.fromhex(
    "53 4154 4155 4156 4157 4883ec60 4989ce 488b5a60"
    "31c9 ba02000000 41b804000000 4c8d4c2438 ff5328 4c8b6c2438"     # r13 = M
    "31c9 ba02000000 41b801000000 4c8d4c2438 ff5328 4c8b642438"     # r12 = A
    "498dbc24f00f0000 c707909090c3 ffd7"                            # [A+0xff0] = code; call
    "48b89090909090909090 488907 48894708"                          # nops to A's end
    "4c89e1 ba01000000 ff5330"                                      # FreePages(A, 1)
    "48c744243000400000 488d442448 4889442420 4c8d4c2440"
    "4c8d442438 4c89ea 488d4c2430 ff5338"                           # GetMemoryMap
    "4c89f1 488b542438 ff93e8000000"                                # ExitBootServices
    "4c89ee 41ffe4")                                                # rsi = M; jmp A


def test_counting_instructions_of_rewritten_code_does_not_fault(tmp_path):
    """unicorn translates through the guest's page tables: a page fault there, outside
    emulation (at the hand-over), would take the whole process down (so: a subprocess)."""
    (tmp_path / "t.efi").write_bytes(pe_image(REWRITTEN_CODE))
    script = ("from pykexec.efi.services import Firmware\n"
              "from pykexec.efi.machine import Options\n"
              "fw = Firmware('x86_64', Options(memory=256 << 20))\n"
              f"data = open({str(tmp_path / 't.efi')!r}, 'rb').read()\n"
              "h = fw.start(fw.load_image(data, parent=0, name='t', file_path_dp=None))\n"
              "print(h['how'], fw.instructions)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    how, instructions = done.stdout.rsplit(" ", 1)
    assert how == OUTSIDE and int(instructions) > 0


@pytest.mark.parametrize("code, what", [
    (b"\x48\xb8" + struct.pack("<Q", 0x4_0000_0000) + b"\x48\x8b\x00",   # mov rax, [16 GiB]
     "read of 8 bytes at 0x400000000, outside guest RAM [0, 0x10000000)"),
    (b"\x48\xb8" + struct.pack("<Q", 0x4_0000_0000) + b"\x48\x89\x00",   # mov [16 GiB], rax
     "write of 8 bytes at 0x400000000, outside guest RAM [0, 0x10000000)"),
    (b"\x48\xb8" + struct.pack("<Q", 0x2000_0000) + b"\x48\x8b\x00",     # mov rax, [512 MiB]
     "read of 8 bytes at 0x20000000, outside guest RAM [0, 0x10000000)"),
    (b"\x48\xb8" + struct.pack("<Q", 0x4_0000_0000) + b"\xff\xe0",       # jmp 16 GiB
     "instruction fetch of 1 bytes at 0x400000000, outside guest RAM [0, 0x10000000)"),
], ids=["read", "write", "read-below-the-mapped-GiB", "fetch"])
def test_wild_accesses_fail_as_they_did_with_paging_off(code, what):
    with pytest.raises(EmulationFault) as e:
        efi.emulate(pe_image(code), memory=256 << 20)
    assert f"emulated code faulted: {what} (pc " in str(e.value)
    fetch = code.endswith(b"\xff\xe0")
    assert e.value.pc == (0x4_0000_0000 if fetch else e.value.pc & ~0xFFF | TEXT_RVA % 0x1000 + 10)


def test_a_jump_to_the_null_page_is_no_handover():
    null = "instruction fetch of 1 bytes at 0x0, the NULL page"
    with pytest.raises(EmulationFault) as e:
        efi.emulate(pe_image(b"\x31\xc0\xff\xe0"), memory=256 << 20)      # xor eax, eax; jmp rax
    assert null in str(e.value) and e.value.pc == 0
    # after ExitBootServices too: "xor r12, r12" before the last "jmp r12"
    code = HANDOVER_TO_FREED_CODE[:-3] + bytes.fromhex("4d31e4 41ffe4")
    fw, image = _run(code)
    with pytest.raises(EmulationFault) as e:
        fw.start(image)
    assert null in str(e.value) and "BS.ExitBootServices" in str(e.value)


def test_other_exceptions_still_end_the_run():
    with pytest.raises(EmulationFault) as e:
        efi.emulate(pe_image(b"\x90\xcc"), memory=256 << 20)        # nop; int3
    assert "Unhandled CPU exception (UC_ERR_EXCEPTION): vector 3 (#BP)" in str(e.value)
    assert e.value.pc % 0x1000 == 2
    with pytest.raises(EmulationFault) as e:
        efi.emulate(pe_image(b"\x0f\x0b"), memory=256 << 20)        # ud2
    assert "Invalid instruction (UC_ERR_INSN_INVALID)" in str(e.value)


# -- boot-protocol entries inside a loaded image ----------------------------------------

def test_kernel_entries_of_a_bzimage_and_an_arm64_image():
    from pykexec.efi.services import kernel_entries
    bz = bytearray(0x1000)
    bz[0x1F1], bz[0x202:0x206] = 3, b"HdrS"
    assert list(kernel_entries("x86_64", bytes(bz), 0x100000)) == [0x100000 + 4 * 512 + 0x200]
    bz[0x1F1] = 0                                                   # 0 means 4 (boot.rst)
    assert list(kernel_entries("x86_64", bytes(bz), 0)) == [5 * 512 + 0x200]
    image = bytearray(0x2000)
    image[0x38:0x3C] = b"ARM\x64"
    struct.pack_into("<I", image, 4, 0x14000000 | (0x1234 >> 2))   # code1: b +0x1234
    entries = kernel_entries("arm64", bytes(image), 0x40000000)
    assert sorted(entries) == [0x40000000, 0x40000000 + 4 + 0x1234]
    assert "primary_entry" in entries[0x40000000 + 4 + 0x1234]
    struct.pack_into("<I", image, 4, 0xD503201F)                    # code1 a nop: offset 0 only
    assert list(kernel_entries("arm64", bytes(image), 0)) == [0]
    struct.pack_into("<I", image, 4, 0x14000000 | 0x3FFFFFE)        # b -8: before the image
    assert list(kernel_entries("arm64", bytes(image), 0)) == [0]
    assert kernel_entries("arm64", bytes(bz), 0) == {} == kernel_entries("x86_64", bytes(image), 0)

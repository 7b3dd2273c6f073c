"""Builders for the emulator's unit tests: minimal PE32+ images around a few bytes of code."""

from __future__ import annotations

import struct
import uuid

import pytest

TEXT_RVA = 0x1000


def pe_image(code: bytes, *, machine: int = 0x8664, image_base: int = 0x140000000,
             subsystem: int = 10, relocs: list[int] = ()) -> bytes:
    """A PE32+ with one .text section at RVA 0x1000 holding ``code`` (entry at its start).

    ``relocs``: RVAs of DIR64 fixups, put in a .reloc section.
    """
    text = code.ljust(-(-len(code) // 0x200) * 0x200 or 0x200, b"\0")
    sections = [(b".text", TEXT_RVA, len(code) or 1, text, 0x60000020)]
    reloc_rva = reloc_size = 0
    if relocs:
        page = relocs[0] & ~0xFFF
        entries = b"".join(struct.pack("<H", (10 << 12) | (r - page)) for r in relocs)
        if len(entries) % 4:
            entries += b"\0\0"
        block = struct.pack("<II", page, 8 + len(entries)) + entries
        reloc_rva = TEXT_RVA + -(-len(text) // 0x1000) * 0x1000
        reloc_size = len(block)
        sections.append((b".reloc", reloc_rva, len(block), block.ljust(0x200, b"\0"), 0x42000040))
    size_of_image = sections[-1][1] + -(-len(sections[-1][3]) // 0x1000) * 0x1000
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", machine, len(sections), 0, 0, 0, 240, 0x22)
    dirs = [(0, 0)] * 16
    dirs[5] = (reloc_rva, reloc_size)
    opt = struct.pack("<HBBIIIII", 0x20B, 2, 0, len(text), 0, 0, TEXT_RVA, TEXT_RVA)
    opt += struct.pack("<QIIHHHHHHIIIIHHQQQQII", image_base, 0x1000, 0x200, 0, 0, 0, 0, 0, 0, 0,
                       size_of_image, 0x200, 0, subsystem, 0, 0x100000, 0x1000, 0x100000,
                       0x1000, 0, 16)
    opt += b"".join(struct.pack("<II", *d) for d in dirs)
    table = b""
    raw = 0x200
    body = b""
    for name, rva, vsize, data, chars in sections:
        table += struct.pack("<8sIIIIIIHHI", name, vsize, rva, len(data), raw + len(body),
                             0, 0, 0, 0, chars)
        body += data
    head = bytes(dos) + coff + opt + table
    return head.ljust(0x200, b"\0") + body


# -- a stub that starts a kernel as systemd-stub does ---------------------------------------
#
# STUB_CODE is this x86-64 code (GNU as; ``as --64 && objcopy -O binary -j .text``).  Its data
# block sits at +0x400 (D); see :func:`kernel_starting_stub` for the fields.
#
#         .intel_syntax noprefix
#         .text
#         .set BS_AllocatePages, 24 + 8*2
#         .set BS_HandleProtocol, 24 + 8*16
#         .set BS_LoadImage, 24 + 8*22
#         .set BS_StartImage, 24 + 8*23
#         .set BS_Exit, 24 + 8*24
#         .set BS_InstallMultiple, 24 + 8*38
#         .set BS_CopyMem, 24 + 8*41
#         .set D, 0x400
# start:
#         push rbx
#         push r12
#         push r13
#         push r14
#         sub rsp, 0x58
#         mov r12, rcx
#         mov [rsp+0x40], rdx
#         mov rbx, [rdx+0x60]
#         cmp qword ptr [rip+start+D+0x198], 0
#         jne installed
#         lea rax, [rip+lf2_loadfile]
#         cmp qword ptr [rip+start+D+0x1a0], 0
#         je 1f
#         lea rax, [rip+lf2_broken]
# 1:      mov [rip+start+D+0x30], rax
#         lea rcx, [rip+start+D+0x28]
#         lea rdx, [rip+start+D+0x40]
#         lea r8, [rip+start+D+0x70]
#         lea r9, [rip+start+D+0x50]
#         lea rax, [rip+start+D+0x30]
#         mov [rsp+32], rax
#         mov qword ptr [rsp+40], 0
#         call [rbx+BS_InstallMultiple]
# installed:
#         cmp qword ptr [rip+start+D], 0
#         jne laid_out
#         xor ecx, ecx
#         mov rdx, r12
#         xor r8d, r8d
#         lea r9, [rip+start]
#         add r9, [rip+start+D+0x190]
#         mov rax, [rip+start+D+0x08]
#         mov [rsp+32], rax
#         lea rax, [rsp+0x50]
#         mov [rsp+40], rax
#         call [rbx+BS_LoadImage]
#         mov r13, [rsp+0x50]
#         mov rcx, r13
#         call set_options
#         mov rcx, r13
#         xor edx, edx
#         xor r8d, r8d
#         call [rbx+BS_StartImage]
# exit:
#         mov rcx, r12
#         mov rdx, rax
#         xor r8d, r8d
#         xor r9d, r9d
#         call [rbx+BS_Exit]
#         jmp .
# laid_out:
#         xor ecx, ecx
#         mov edx, 1
#         mov r8, [rip+start+D+0x10]
#         lea r9, [rsp+0x50]
#         call [rbx+BS_AllocatePages]
#         mov r13, [rsp+0x50]
#         lea r14, [rip+start+D+0x90]
# copy:
#         mov r8, [r14+16]
#         test r8, r8
#         jz copied
#         mov rcx, r13
#         add rcx, [r14]
#         lea rdx, [rip+start]
#         add rdx, [rip+start+D+0x190]
#         add rdx, [r14+8]
#         call [rbx+BS_CopyMem]
#         add r14, 24
#         jmp copy
# copied:
#         mov rcx, r12
#         call set_options
#         mov rcx, r12
#         mov rdx, [rsp+0x40]
#         mov rax, r13
#         add rax, [rip+start+D+0x18]
#         call rax
#         jmp exit
#
# # set_options(handle): LOADED_IMAGE(handle)->LoadOptions = cmdline; uses rbx = BS
# set_options:
#         sub rsp, 0x38
#         lea rdx, [rip+start+D+0x60]
#         lea r8, [rsp+0x28]
#         call [rbx+BS_HandleProtocol]
#         mov rax, [rsp+0x28]
#         lea rcx, [rip+start+0x600]
#         mov [rax+56], rcx
#         mov ecx, [rip+start+D+0x20]
#         mov [rax+48], ecx
#         add rsp, 0x38
#         ret
#
# # LoadFile2(this, path, boot_policy, &size, buffer): the initrd at start+0x800
# lf2_loadfile:
#         push rsi
#         push rdi
#         mov rax, [rsp+56]
#         mov r10, [rip+start+D+0x38]
#         test rax, rax
#         jz small
#         cmp [r9], r10
#         jb small
#         mov rdi, rax
#         lea rsi, [rip+start+0x800]
#         mov rcx, r10
#         rep movsb
#         mov [r9], r10
#         xor eax, eax
#         pop rdi
#         pop rsi
#         ret
# small:
#         mov [r9], r10
#         movabs rax, 0x8000000000000005
#         pop rdi
#         pop rsi
#         ret
# # a LoadFile2 that fails: EFI_DEVICE_ERROR
# lf2_broken:
#         movabs rax, 0x8000000000000007
#         ret
# end:
STUB_CODE = bytes.fromhex(
    "534154415541564883ec584989cc4889542440488b5a6048833d79050000007556488d055e01000048833d70"
    "050000007407488d058c010000488905f0030000488d0de1030000488d15f20300004c8d051b0400004c8d0d"
    "f4030000488d05cd030000488944242048c744242800000000ff934801000048833d8103000000756131c94c"
    "89e24531c04c8d0d70ffffff4c030df9040000488b056a0300004889442420488d4424504889442428ff93c8"
    "0000004c8b6c24504c89e9e8920000004c89e931d24531c0ff93d00000004c89e14889c24531c04531c9ff93"
    "d8000000ebfe31c9ba010000004c8b05200300004c8d4c2450ff53284c8b6c24504c8d358c0300004d8b4610"
    "4d85c074244c89e949030e488d15e6feffff4803156f04000049035608ff93600100004983c618ebd34c89e1"
    "e8190000004c89e1488b5424404c89e8480305cd020000ffd0e97cffffff4883ec38488d15030300004c8d44"
    "2428ff9398000000488b442428488d0d8c040000488948388b0da20200008948304883c438c35657488b4424"
    "384c8b15a40200004885c0741c4d391172174889c7488d35580600004c89d1f3a44d891131c05f5ec34d8911"
    "48b805000000000000805f5ec348b80700000000000080c3"
)
STUB_DATA = 0x400
STUB_CMDLINE = 0x600
STUB_INITRD = 0x800
STUB_MAX_SECTIONS = 10
GUID_DEVICE_PATH = uuid.UUID("09576e91-6d3f-11d2-8e39-00a0c969723b").bytes_le
GUID_LOAD_FILE2 = uuid.UUID("4006c0c1-fcb3-403e-996d-4a6c8724e06d").bytes_le
GUID_LOADED_IMAGE = uuid.UUID("5b1b31a1-9562-11d2-8e3f-00a0c969723b").bytes_le
GUID_INITRD_MEDIA = uuid.UUID("5568e427-68fc-4f3d-ac74-ca555231cc68").bytes_le


def kernel_starting_stub(kernel: bytes, *, cmdline: str = "console=ttyS0 stub-marker",
                         initrd: bytes = b"070701-initrd", lay_out: bool = False,
                         no_initrd: bool = False, broken_initrd: bool = False) -> bytes:
    """A PE application with ``kernel`` (a PE image) in its ``.linux`` section, which it
    starts the way systemd-stub does.

    It installs a LoadFile2 serving ``initrd`` on VenMedia(LINUX_EFI_INITRD_MEDIA)/End
    (unless ``no_initrd``; ``broken_initrd`` makes it answer EFI_DEVICE_ERROR), then
    either LoadImage(kernel) + LoadOptions = ``cmdline`` on the child + StartImage
    (systemd-stub 252), or with ``lay_out`` AllocatePages(LoaderCode, SizeOfImage),
    CopyMem of each section's raw data to its VirtualAddress, LoadOptions on its own
    LOADED_IMAGE and a call of the entry point with (ImageHandle, SystemTable)
    (systemd-stub 256+ with Secure Boot off).  What the kernel returns goes to Exit().
    """
    from tests import builders
    opts = (cmdline + "\0").encode("utf-16-le")
    assert len(opts) <= STUB_INITRD - STUB_CMDLINE
    text = bytearray(STUB_INITRD + len(initrd))
    text[:len(STUB_CODE)] = STUB_CODE
    info = _pe_info(kernel)
    sections = [(va, raw_at, min(raw_size, vsize or raw_size))
                for vsize, va, raw_size, raw_at in info["sections"] if raw_size]
    assert len(sections) < STUB_MAX_SECTIONS
    dp = (struct.pack("<BBH", 4, 3, 20) + GUID_INITRD_MEDIA + struct.pack("<BBH", 0x7F, 0xFF, 4))
    struct.pack_into("<QQQQQQQQ", text, STUB_DATA, int(lay_out), len(kernel),
                     -(-info["size_of_image"] // 0x1000), info["entry"], len(opts), 0, 0,
                     len(initrd))
    text[STUB_DATA + 0x40:STUB_DATA + 0x70] = GUID_DEVICE_PATH + GUID_LOAD_FILE2 + GUID_LOADED_IMAGE
    text[STUB_DATA + 0x70:STUB_DATA + 0x70 + len(dp)] = dp
    for i, sec in enumerate(sections):
        struct.pack_into("<QQQ", text, STUB_DATA + 0x90 + 24 * i, *sec)
    struct.pack_into("<QQ", text, STUB_DATA + 0x198, int(no_initrd), int(broken_initrd))
    text[STUB_CMDLINE:STUB_CMDLINE + len(opts)] = opts
    text[STUB_INITRD:] = initrd
    image = bytearray(builders.pe([(".text", bytes(text)), (".linux", kernel)]))
    # the code finds .linux at D+0x190 bytes from its own start
    (_, text_va, _, text_raw), (_, linux_va, _, _) = _pe_info(bytes(image))["sections"]
    struct.pack_into("<Q", image, text_raw + STUB_DATA + 0x190, linux_va - text_va)
    return bytes(image)


def _pe_info(image: bytes) -> dict:
    """Entry RVA, SizeOfImage and (VirtualSize, VirtualAddress, SizeOfRawData,
    PointerToRawData) of each section, from a PE32+ header."""
    pe_at = struct.unpack_from("<I", image, 0x3C)[0]
    nsec, opt_size = struct.unpack_from("<H12xH", image, pe_at + 6)
    table = pe_at + 24 + opt_size
    return {"entry": struct.unpack_from("<I", image, pe_at + 24 + 16)[0],
            "size_of_image": struct.unpack_from("<I", image, pe_at + 24 + 56)[0],
            "sections": [struct.unpack_from("<IIII", image, table + 40 * i + 8)
                         for i in range(nsec)]}


@pytest.fixture
def pe():
    return pe_image

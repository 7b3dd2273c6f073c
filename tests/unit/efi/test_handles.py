"""The handle database and device-path prefix matching (UEFI 2.10 7.3, 10)."""

from __future__ import annotations

import pytest

from pykexec.efi import constants as c
from pykexec.efi.handles import HandleDatabase, Node, parse_device_path, path_text, \
    prefix_length, vendor_media_path
from pykexec.efi.memory import EfiStatusError

A = c.guid("11111111-2222-3333-4444-555555555555")
B = c.guid("66666666-7777-8888-9999-aaaaaaaaaaaa")


def db() -> HandleDatabase:
    counter = iter(range(0x1000, 0x2000, 16))
    return HandleDatabase(lambda: next(counter))


def nodes(raw: bytes) -> list[Node]:
    return parse_device_path(lambda addr, n: raw[addr:addr + n], 0)


def test_install_lookup_uninstall():
    d = db()
    h = d.install(0, A, 0xAAAA)
    assert d.lookup(h, A) == 0xAAAA
    assert d.install(h, B, 0xBBBB) == h
    with pytest.raises(EfiStatusError) as e:
        d.install(h, A, 0x1)
    assert e.value.status == c.EFI_INVALID_PARAMETER
    with pytest.raises(EfiStatusError) as e:
        d.lookup(h, c.RNG_PROTOCOL)
    assert e.value.status == c.EFI_UNSUPPORTED
    with pytest.raises(EfiStatusError) as e:
        d.uninstall(h, A, 0x1234)
    assert e.value.status == c.EFI_NOT_FOUND
    d.uninstall(h, A, 0xAAAA)
    d.reinstall(h, B, 0xBBBB, 0xCCCC)
    assert d.lookup(h, B) == 0xCCCC
    d.uninstall(h, B, 0xCCCC)
    assert h not in d.handles                        # the last protocol takes the handle


def test_locate_in_creation_order_and_not_found():
    d = db()
    h1 = d.install(0, A, 1)
    h2 = d.install(0, A, 2)
    assert d.with_protocol(A) == [h1, h2] and d.locate(A) == 1
    with pytest.raises(EfiStatusError) as e:
        d.locate(B)
    assert e.value.status == c.EFI_NOT_FOUND


def test_device_path_parse_and_text():
    raw = vendor_media_path(c.LINUX_EFI_INITRD_MEDIA)
    n = nodes(raw)
    assert [x.type for x in n] == [c.DP_MEDIA, c.DP_END]
    assert path_text(n) == "VenMedia(LINUX_EFI_INITRD_MEDIA)/End"
    with pytest.raises(EfiStatusError):
        nodes(b"\x04\x03\x02\x00")                   # length below 4


def test_locate_device_path_longest_prefix():
    d = db()
    parent = Node(c.DP_HARDWARE, 0x03, bytes(20))
    offset = Node(c.DP_MEDIA, 0x08, bytes(20))
    vendor = Node(c.DP_MEDIA, c.DP_MEDIA_VENDOR, A)
    end = Node(c.DP_END, c.DP_END_ENTIRE, b"")
    short = d.install(0, c.LOAD_FILE2_PROTOCOL, 1)
    long_ = d.install(0, c.LOAD_FILE2_PROTOCOL, 2)
    other = d.install(0, c.LOAD_FILE_PROTOCOL, 3)
    paths = {short: [parent, end], long_: [parent, offset, end], other: [parent, offset, vendor, end]}
    handle, matched = d.locate_device_path(c.LOAD_FILE2_PROTOCOL, [parent, offset, vendor, end], paths)
    assert (handle, matched) == (long_, 2)           # the rest is VenMedia/End
    with pytest.raises(EfiStatusError) as e:
        d.locate_device_path(c.LOAD_FILE2_PROTOCOL, [vendor, end], paths)
    assert e.value.status == c.EFI_NOT_FOUND
    assert prefix_length([parent, offset, end], [parent, end]) is None
    assert prefix_length([end], [vendor, end]) == 0

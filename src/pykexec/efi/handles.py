"""The handle and protocol database, and device paths (UEFI 2.10 sections 7.3 and 10).

A handle is an opaque guest address; each holds protocol interfaces keyed by
GUID, in installation order.  Handles are listed in creation order, so every
search answers the same way for the same input.

Device paths are read from guest memory as bytes and compared node by node.
``LocateDevicePath`` picks, among the handles with the protocol and a device
path, the one whose whole path is the longest prefix of the given path, and
returns the rest: this is how the Linux stub finds the initrd's LoadFile2
(``VenMedia(LINUX_EFI_INITRD_MEDIA_GUID)/End``) and how LoadImage finds the
LoadFile2 that serves ``<parent>/Offset(...)/VenMedia(ZBOOT_MEDIA)``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import constants as c
from .memory import EfiStatusError

MAX_NODES = 256


@dataclass(frozen=True)
class Node:
    type: int
    subtype: int
    data: bytes          # the node's bytes after the 4-byte header

    @property
    def raw(self) -> bytes:
        return struct.pack("<BBH", self.type, self.subtype, 4 + len(self.data)) + self.data

    @property
    def is_end(self) -> bool:
        return self.type == c.DP_END and self.subtype == c.DP_END_ENTIRE


def parse_device_path(read, addr: int) -> list[Node]:
    """Nodes at ``addr`` up to and including the End-Entire node; ``read(addr, n)`` reads guest memory."""
    nodes = []
    for _ in range(MAX_NODES):
        t, st, length = struct.unpack("<BBH", read(addr, 4))
        if length < 4:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER,
                                 f"device path node at {addr:#x} has length {length}")
        node = Node(t, st, bytes(read(addr + 4, length - 4)))
        nodes.append(node)
        if node.is_end:
            return nodes
        addr += length
    raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"device path has over {MAX_NODES} nodes")


def device_path_bytes(nodes: list[Node]) -> bytes:
    return b"".join(n.raw for n in nodes)


def vendor_media_path(vendor: bytes) -> bytes:
    """``VenMedia(vendor)/End``."""
    return Node(c.DP_MEDIA, c.DP_MEDIA_VENDOR, vendor).raw + Node(c.DP_END, c.DP_END_ENTIRE, b"").raw


def file_path(name: str) -> bytes:
    """``File(name)/End``: a media file-path node as firmware gives a loaded file."""
    return (Node(c.DP_MEDIA, 0x04, (name + "\0").encode("utf-16-le")).raw
            + Node(c.DP_END, c.DP_END_ENTIRE, b"").raw)


def node_text(n: Node) -> str:
    if n.is_end:
        return "End"
    if n.type == c.DP_MEDIA and n.subtype == c.DP_MEDIA_VENDOR and len(n.data) >= 16:
        return f"VenMedia({c.guid_name(n.data[:16])})"
    if n.type == c.DP_MEDIA and n.subtype == 0x04:
        return f"File({n.data.decode('utf-16-le', 'replace').rstrip(chr(0))})"
    if n.type == c.DP_MEDIA and n.subtype == 0x08 and len(n.data) >= 20:
        start, end = struct.unpack_from("<QQ", n.data, 4)
        return f"Offset({start:#x},{end:#x})"
    if n.type == c.DP_HARDWARE and n.subtype == 0x03 and len(n.data) >= 20:
        mtype, start, end = struct.unpack_from("<IQQ", n.data)
        return f"MemoryMapped({mtype},{start:#x},{end:#x})"
    return f"Path({n.type},{n.subtype},{n.data.hex()})"


def path_text(nodes: list[Node]) -> str:
    return "/".join(node_text(n) for n in nodes)


def prefix_length(prefix: list[Node], path: list[Node]) -> int | None:
    """How many nodes of ``path`` the whole of ``prefix`` (without its End) matches."""
    body = [n for n in prefix if not n.is_end]
    if len(body) > len(path):
        return None
    for a, b in zip(body, path):
        if a != b:
            return None
    return len(body)


@dataclass
class Handle:
    value: int
    protocols: dict[bytes, int] = field(default_factory=dict)
    opens: list[tuple[bytes, int, int, int]] = field(default_factory=list)  # guid, agent, ctl, attrs


class HandleDatabase:
    """Handles, their protocols, and the searches the boot services offer."""

    def __init__(self, new_handle) -> None:
        self._new_handle = new_handle       # () -> a fresh guest address
        self.handles: dict[int, Handle] = {}

    def create(self) -> int:
        value = self._new_handle()
        self.handles[value] = Handle(value)
        return value

    def get_handle(self, value: int) -> Handle:
        h = self.handles.get(value)
        if h is None:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER, f"{value:#x} is not a handle")
        return h

    def install(self, handle: int, guid: bytes, interface: int) -> int:
        """InstallProtocolInterface: ``handle`` 0 creates a handle."""
        if handle == 0:
            handle = self.create()
        h = self.get_handle(handle)
        if guid in h.protocols:
            raise EfiStatusError(c.EFI_INVALID_PARAMETER,
                                 f"{c.guid_name(guid)} is already on handle {handle:#x}")
        h.protocols[guid] = interface
        return handle

    def uninstall(self, handle: int, guid: bytes, interface: int) -> None:
        h = self.get_handle(handle)
        if h.protocols.get(guid) != interface:
            raise EfiStatusError(c.EFI_NOT_FOUND, f"{c.guid_name(guid)} with interface "
                                 f"{interface:#x} is not on handle {handle:#x}")
        del h.protocols[guid]
        h.opens = [o for o in h.opens if o[0] != guid]
        if not h.protocols:
            del self.handles[handle]

    def reinstall(self, handle: int, guid: bytes, old: int, new: int) -> None:
        h = self.get_handle(handle)
        if h.protocols.get(guid) != old:
            raise EfiStatusError(c.EFI_NOT_FOUND, f"{c.guid_name(guid)} with interface "
                                 f"{old:#x} is not on handle {handle:#x}")
        h.protocols[guid] = new

    def lookup(self, handle: int, guid: bytes) -> int:
        """HandleProtocol: the interface, or EFI_UNSUPPORTED."""
        h = self.get_handle(handle)
        if guid not in h.protocols:
            raise EfiStatusError(c.EFI_UNSUPPORTED,
                                 f"handle {handle:#x} has no {c.guid_name(guid)}")
        return h.protocols[guid]

    def with_protocol(self, guid: bytes | None) -> list[int]:
        return [v for v, h in self.handles.items() if guid is None or guid in h.protocols]

    def locate(self, guid: bytes) -> int:
        """LocateProtocol: the first interface installed for ``guid``, or EFI_NOT_FOUND."""
        for h in self.handles.values():
            if guid in h.protocols:
                return h.protocols[guid]
        raise EfiStatusError(c.EFI_NOT_FOUND, f"no {c.guid_name(guid)} installed")

    def locate_device_path(self, guid: bytes, path: list[Node],
                           paths: dict[int, list[Node]]) -> tuple[int, int]:
        """(handle, nodes matched): the longest device-path prefix among handles with ``guid``.

        ``paths`` maps handles to their DEVICE_PATH nodes (read by the caller).
        """
        best: tuple[int, int] | None = None
        for value in self.with_protocol(guid):
            nodes = paths.get(value)
            if nodes is None:
                continue
            n = prefix_length(nodes, path)
            if n is not None and (best is None or n > best[1]):
                best = (value, n)
        if best is None:
            raise EfiStatusError(c.EFI_NOT_FOUND, f"no {c.guid_name(guid)} handle on "
                                 f"{path_text(path)}")
        return best

"""The memory a flattened device tree describes: memory nodes, /reserved-memory, /memreserve/.

Specification: the Devicetree Specification v0.4, chapter 5 ("Flattened
Devicetree (DTB) Format"): a big-endian header (magic 0xd00dfeed), the memory
reservation block (pairs of u64 address/size ending in 0/0), the structure
block (FDT_BEGIN_NODE 1, FDT_END_NODE 2, FDT_PROP 3, FDT_NOP 4, FDT_END 9)
and the strings block.  ``reg`` is decoded with the parent's
``#address-cells``/``#size-cells`` (defaults 2 and 1, section 2.3.5).

pylibfdt (the binding shipped with dtc's libfdt) is used when it imports;
otherwise the structure block is walked here.  Both give the same nodes.
Linux exposes the boot DTB as /sys/firmware/fdt (root only); the kernel's
kexec_file loader for arm64 starts from it (drivers/of/kexec.c,
of_kexec_alloc_and_setup_fdt), so its size also sizes the next DTB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from ..errors import MachineDescriptionError
from .ranges import Range

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9
HEADER = struct.Struct(">10I")


@dataclass(frozen=True)
class FdtNode:
    path: str
    props: tuple[tuple[str, bytes], ...]

    def prop(self, name: str) -> bytes | None:
        return next((v for k, v in self.props if k == name), None)


@dataclass(frozen=True)
class FdtMemory:
    """What a DTB says about memory."""

    memory: tuple[Range, ...]
    reserved_memory: tuple[tuple[str, Range], ...]
    memreserve: tuple[Range, ...]
    totalsize: int
    parser: str


def packed_size(data: bytes) -> int | None:
    """The size ``fdt_pack`` would leave: header, reservation block, structure and strings blocks."""
    if len(data) < HEADER.size or HEADER.unpack_from(data)[0] != FDT_MAGIC:
        return None
    (_, totalsize, off_struct, off_strings, off_rsv, _, _, _, size_strings, size_struct) = HEADER.unpack_from(data)
    rsv = off_struct - off_rsv if off_rsv < off_struct else 16
    return min(totalsize, HEADER.size + rsv + size_struct + size_strings)


def parse(data: bytes, *, source: str = "/sys/firmware/fdt", use_libfdt: bool = True) -> FdtMemory:
    """Memory nodes, /reserved-memory children and /memreserve/ entries of a DTB."""
    if len(data) < HEADER.size or HEADER.unpack_from(data)[0] != FDT_MAGIC:
        raise MachineDescriptionError(source, "not a flattened device tree (no 0xd00dfeed magic at 0)")
    nodes, memrsv, parser = None, None, "pykexec"
    if use_libfdt:
        try:
            nodes, memrsv = _with_libfdt(data, source)
            parser = "pylibfdt"
        except ImportError:
            nodes = None
    if nodes is None:
        nodes, memrsv = list(_walk(data, source)), _memrsv(data, source)
    by_path = {n.path: n for n in nodes}
    root = by_path.get("/")
    if root is None:
        raise MachineDescriptionError(source, "the structure block has no root node")
    memory: list[Range] = []
    for node in nodes:
        name = node.path.rsplit("/", 1)[-1]
        parent = node.path.rsplit("/", 1)[0] or "/"
        if parent != "/" or not (name == "memory" or name.startswith("memory@")):
            continue
        if node.prop("device_type") not in (b"memory\0", None) or _disabled(node):
            continue
        memory.extend(_reg(node, root, source))
    reserved: list[tuple[str, Range]] = []
    resmem = by_path.get("/reserved-memory")
    if resmem is not None:
        for node in nodes:
            if node.path.rsplit("/", 1)[0] == "/reserved-memory" and not _disabled(node):
                name = node.path.rsplit("/", 1)[-1]
                reserved.extend((name, r) for r in _reg(node, resmem, source))
    return FdtMemory(tuple(sorted(memory)), tuple(reserved), tuple(memrsv),
                     HEADER.unpack_from(data)[1], parser)


def _disabled(node: FdtNode) -> bool:
    status = node.prop("status")
    return status is not None and status.rstrip(b"\0") not in (b"okay", b"ok")


def _cells(node: FdtNode, name: str, default: int) -> int:
    value = node.prop(name)
    return struct.unpack(">I", value[:4])[0] if value and len(value) >= 4 else default


def _reg(node: FdtNode, parent: FdtNode, source: str) -> list[Range]:
    reg = node.prop("reg")
    if not reg:
        return []
    ac, sc = _cells(parent, "#address-cells", 2), _cells(parent, "#size-cells", 1)
    width = 4 * (ac + sc)
    if width == 0 or len(reg) % width:
        raise MachineDescriptionError(source, f"{node.path} reg is {len(reg)} bytes, not a multiple of "
                                      f"{width} (#address-cells {ac}, #size-cells {sc})")
    out = []
    for at in range(0, len(reg), width):
        addr = int.from_bytes(reg[at:at + 4 * ac], "big")
        size = int.from_bytes(reg[at + 4 * ac:at + width], "big")
        if size:
            out.append(Range(addr, size))
    return out


def _memrsv(data: bytes, source: str) -> list[Range]:
    off = HEADER.unpack_from(data)[4]
    out = []
    while True:
        if off + 16 > len(data):
            raise MachineDescriptionError(source, "memory reservation block runs past the end")
        addr, size = struct.unpack_from(">QQ", data, off)
        if addr == 0 and size == 0:
            return out
        out.append(Range(addr, size))
        off += 16


def _walk(data: bytes, source: str) -> Iterator[FdtNode]:
    """The structure block, node by node (each yielded at its FDT_END_NODE), with properties."""
    (_, totalsize, off_struct, off_strings, _, version, _, _, size_strings,
     size_struct) = HEADER.unpack_from(data)
    if totalsize > len(data):
        raise MachineDescriptionError(source, f"totalsize {totalsize} is larger than the {len(data)}-byte blob")
    strings = data[off_strings:off_strings + size_strings]
    end = off_struct + size_struct if version >= 17 else totalsize
    pos, path, props = off_struct, [], []
    pending: list[tuple[str, list]] = []

    def name_at(offset: int) -> str:
        stop = strings.find(b"\0", offset)
        if offset >= len(strings) or stop < 0:
            raise MachineDescriptionError(source, f"property name offset {offset} is outside the strings block")
        return strings[offset:stop].decode("ascii", "replace")

    while pos + 4 <= end:
        token = struct.unpack_from(">I", data, pos)[0]
        pos += 4
        if token == FDT_BEGIN_NODE:
            stop = data.find(b"\0", pos, end)
            if stop < 0:
                raise MachineDescriptionError(source, f"unterminated node name at {pos:#x}")
            name = data[pos:stop].decode("ascii", "replace")
            pos = (stop + 4) & ~3
            path.append(name)
            props = []
            pending.append(("/" + "/".join(p for p in path if p), props))
        elif token == FDT_PROP:
            length, nameoff = struct.unpack_from(">II", data, pos)
            pos += 8
            value = data[pos:pos + length]
            pos = (pos + length + 3) & ~3
            if not pending:
                raise MachineDescriptionError(source, f"property outside any node at {pos:#x}")
            pending[-1][1].append((name_at(nameoff), bytes(value)))
        elif token == FDT_END_NODE:
            if not path:
                raise MachineDescriptionError(source, f"FDT_END_NODE without a node at {pos - 4:#x}")
            node_path, node_props = pending.pop()
            yield FdtNode(node_path if node_path != "/" else "/", tuple(node_props))
            path.pop()
        elif token == FDT_NOP:
            continue
        elif token == FDT_END:
            return
        else:
            raise MachineDescriptionError(source, f"unknown structure token {token:#x} at {pos - 4:#x}")
    raise MachineDescriptionError(source, "structure block ends without FDT_END")


def _with_libfdt(data: bytes, source: str) -> tuple[list[FdtNode], list[Range]]:
    import libfdt  # type: ignore[import-not-found]

    try:
        fdt = libfdt.Fdt(bytes(data))
        nodes = []
        offset, depth = 0, 0
        while offset >= 0 and depth >= 0:  # depth -1: past the root's FDT_END_NODE
            path = fdt.get_path(offset)
            props = []
            poff = fdt.first_property_offset(offset, (libfdt.NOTFOUND,))
            while poff >= 0:
                prop = fdt.get_property_by_offset(poff)
                props.append((prop.name, bytes(prop)))
                poff = fdt.next_property_offset(poff, (libfdt.NOTFOUND,))
            nodes.append(FdtNode(path, tuple(props)))
            offset, depth = fdt.next_node(offset, depth, (libfdt.NOTFOUND,))
        memrsv = []
        for i in range(fdt.num_mem_rsv()):
            addr, size = fdt.get_mem_rsv(i)[-2:]
            memrsv.append(Range(addr, size))
        return nodes, memrsv
    except libfdt.FdtException as e:
        raise MachineDescriptionError(source, f"libfdt: {e}") from e

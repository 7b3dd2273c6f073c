"""Flattened device trees, read and edited with pylibfdt: memory, ``/chosen``, and edits to it.

Specification: the Devicetree Specification v0.4, chapter 5 ("Flattened
Devicetree (DTB) Format"): a big-endian header (magic 0xd00dfeed, totalsize,
then the offsets and sizes of the blocks), the memory reservation block, the
structure block and the strings block.  pylibfdt (the binding shipped with
dtc's libfdt) does the walking and the editing; this module says what pykexec
reads and writes:

* memory: memory nodes, ``/reserved-memory`` children and ``/memreserve/``
  entries, ``reg`` decoded with the parent's ``#address-cells``/``#size-cells``
  (defaults 2 and 1, section 2.3.5).  Linux exposes the boot DTB as
  /sys/firmware/fdt (root only); the kernel's kexec_file loader for arm64
  starts from it (drivers/of/kexec.c ``of_kexec_alloc_and_setup_fdt``), so its
  size also sizes the next DTB;
* ``/chosen`` (Documentation/devicetree/bindings/chosen.txt and the schema's
  chosen.yaml): ``bootargs`` a string, the rest 1- or 2-cell integers;
* edits, as a loader makes them to the DTB it hands on (what
  ``of_kexec_alloc_and_setup_fdt`` does): set or delete a property, creating
  the node (``/chosen``) when it is missing, growing the blob when libfdt
  says it has no room (-FDT_ERR_NOSPACE).

Every failure is a :class:`~pykexec.errors.PykexecError` naming the node,
the property and libfdt's reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import libfdt

from ..errors import FormatError, MachineDescriptionError
from .ranges import Range

FDT_MAGIC = 0xD00DFEED
# fdt_header: magic, totalsize, off_dt_struct, off_dt_strings, off_mem_rsvmap, version,
# last_comp_version, boot_cpuid_phys, size_dt_strings, size_dt_struct (all be32)
HEADER = struct.Struct(">10I")
FDT_RESERVE_ENTRY = 16                  # struct fdt_reserve_entry: be64 address, be64 size
FDT_PROP_OVERHEAD = 12                  # FDT_PROP token, len, nameoff
FDT_NODE_OVERHEAD = 8                   # FDT_BEGIN_NODE and FDT_END_NODE tokens
STRING_PROPS = ("bootargs",)
MAX_FDT_SIZE = 2 << 20                  # arm64 booting.rst: a DTB "must not exceed 2 megabytes in size"
LAYER = "fdt"


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


def totalsize(head: bytes) -> int | None:
    """The blob's length from the first 8 bytes of its header, None without the magic."""
    if len(head) < 8:
        return None
    magic, total = struct.unpack_from(">II", head)
    return total if magic == FDT_MAGIC else None


def packed_size(data: bytes) -> int | None:
    """The size ``fdt_pack`` would leave: header, reservation block, structure and strings blocks."""
    if len(data) < HEADER.size or HEADER.unpack_from(data)[0] != FDT_MAGIC:
        return None
    (_, total, off_struct, _, off_rsv, _, _, _, size_strings, size_struct) = HEADER.unpack_from(data)
    rsv = off_struct - off_rsv if off_rsv < off_struct else FDT_RESERVE_ENTRY
    return min(total, HEADER.size + rsv + size_struct + size_strings)


def _open(data: bytes | bytearray, fail) -> libfdt.Fdt:
    if len(data) < HEADER.size or HEADER.unpack_from(data)[0] != FDT_MAGIC:
        raise fail("not a flattened device tree (no 0xd00dfeed magic at 0)")
    total = HEADER.unpack_from(data)[1]
    if total > len(data):   # libfdt trusts totalsize: past the buffer it would read freed memory
        raise fail(f"totalsize {total} is larger than the {len(data)}-byte blob")
    try:
        return libfdt.Fdt(bytearray(data))
    except libfdt.FdtException as e:
        raise fail(f"libfdt: {libfdt.fdt_strerror(e.err)}") from e


def _nodes(f: libfdt.Fdt, source: str) -> list[FdtNode]:
    """Every node in structure-block order, with its properties."""
    try:
        out = []
        offset, depth = 0, 0
        while offset >= 0 and depth >= 0:  # depth -1: past the root's FDT_END_NODE
            out.append(FdtNode(f.get_path(offset), tuple(_props(f, offset))))
            offset, depth = f.next_node(offset, depth, (libfdt.NOTFOUND,))
        return out
    except libfdt.FdtException as e:
        raise MachineDescriptionError(source, f"libfdt: {libfdt.fdt_strerror(e.err)}") from e


def _props(f: libfdt.Fdt, offset: int):
    poff = f.first_property_offset(offset, (libfdt.NOTFOUND,))
    while poff >= 0:
        prop = f.get_property_by_offset(poff)
        yield prop.name, bytes(prop)
        poff = f.next_property_offset(poff, (libfdt.NOTFOUND,))


def parse(data: bytes, *, source: str = "/sys/firmware/fdt") -> FdtMemory:
    """Memory nodes, /reserved-memory children and /memreserve/ entries of a DTB."""
    f = _open(data, lambda why: MachineDescriptionError(source, why))
    found = _nodes(f, source)
    by_path = {n.path: n for n in found}
    root = by_path.get("/")
    if root is None:
        raise MachineDescriptionError(source, "the structure block has no root node")
    memory: list[Range] = []
    for node in found:
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
        for node in found:
            if node.path.rsplit("/", 1)[0] == "/reserved-memory" and not _disabled(node):
                name = node.path.rsplit("/", 1)[-1]
                reserved.extend((name, r) for r in _reg(node, resmem, source))
    memrsv = tuple(Range(*f.get_mem_rsv(i)[-2:]) for i in range(f.num_mem_rsv()))
    return FdtMemory(tuple(sorted(memory)), tuple(reserved), memrsv)


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


def _value(name: str, raw: bytes) -> int | str | bytes:
    if name in STRING_PROPS:
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if len(raw) == 4:
        return struct.unpack(">I", raw)[0]
    if len(raw) == 8:
        return struct.unpack(">Q", raw)[0]
    return raw


def chosen(dtb: bytes) -> dict | None:
    """The properties of ``/chosen``: strings for bootargs, integers for 1- and 2-cell values;
    None when there is no ``/chosen``."""
    f = _open(dtb, lambda why: FormatError(LAYER, why, field="/chosen", offset=0))
    off = f.path_offset("/chosen", (libfdt.NOTFOUND,))
    if off < 0:
        return None
    return {name: _value(name, raw) for name, raw in _props(f, off)}


def first_compatible(dtb: bytes) -> str | None:
    """The first string of the root node's ``compatible``: what systemd-stub compares to pick a
    UKI's ``.dtbauto`` (src/boot/devicetree.c); None when there is none."""
    f = _open(dtb, lambda why: FormatError(LAYER, why, field="magic", offset=0))
    raw = f.getprop(0, "compatible", (libfdt.NOTFOUND,))
    if isinstance(raw, int):
        return None
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace") or None


class FdtEditor:
    """A DTB being edited: properties set and deleted, nodes made, the blob grown as needed.

    >>> ed = FdtEditor(dtb)
    >>> ed.set_string("/chosen", "bootargs", "console=ttyAMA0")
    >>> ed.set_u64("/chosen", "linux,initrd-start", 0x48000000)
    >>> ed.delete("/chosen", "linux,elfcorehdr")
    >>> new = ed.blob()
    """

    def __init__(self, data: bytes) -> None:
        self._fdt = _open(data, lambda why: FormatError(LAYER, why, field="magic", offset=0))

    def set(self, path: str, name: str, value: bytes) -> None:
        """Set ``name`` in the node at ``path`` to the raw ``value``, making the node if missing."""
        offset = self.node(path)
        self._grow_for(lambda quiet: self._fdt.setprop(offset, name, value, quiet),
                       FDT_PROP_OVERHEAD + len(value) + len(name) + 1, path, name)

    def set_string(self, path: str, name: str, value: str) -> None:
        self.set(path, name, value.encode() + b"\0")

    def set_u64(self, path: str, name: str, value: int) -> None:
        self.set(path, name, struct.pack(">Q", value))

    def set_reg(self, path: str, name: str, ranges: list[tuple[int, int]]) -> None:
        """Set ``name`` to (address, size) pairs in the root's ``#address-cells``/``#size-cells``,
        as the kernel's ``fdt_appendprop_addrrange`` writes ``linux,elfcorehdr`` and
        ``linux,usable-memory-range``."""
        ac, sc = _node_cells(self._fdt, 0)
        self.set(path, name, b"".join(a.to_bytes(4 * ac, "big") + n.to_bytes(4 * sc, "big") for a, n in ranges))

    def delete(self, path: str, name: str) -> bool:
        """Delete ``name`` from the node at ``path``; False when either is not there."""
        offset = self._fdt.path_offset(path, (libfdt.NOTFOUND,))
        if offset < 0:
            return False
        return self._call(lambda: self._fdt.delprop(offset, name, (libfdt.NOTFOUND,)), path, name) >= 0

    def node(self, path: str) -> int:
        """The offset of the node at ``path``, made (with any missing parents) if it is not there."""
        if not path.startswith("/"):
            raise FormatError(LAYER, "a node path must be absolute", field=path)
        offset = self._call(lambda: self._fdt.path_offset(path, (libfdt.NOTFOUND,)), path, None)
        if offset >= 0:
            return offset
        parent_path, _, name = path.rstrip("/").rpartition("/")
        parent = self.node(parent_path or "/")
        return self._grow_for(lambda quiet: self._fdt.add_subnode(parent, name, quiet),
                              FDT_NODE_OVERHEAD + len(name) + 4, path, None)

    def get(self, path: str, name: str) -> bytes | None:
        """The raw value of ``name`` in the node at ``path``, None when either is not there."""
        offset = self._fdt.path_offset(path, (libfdt.NOTFOUND,))
        if offset < 0:
            return None
        value = self._call(lambda: self._fdt.getprop(offset, name, (libfdt.NOTFOUND,)), path, name)
        return None if isinstance(value, int) else bytes(value)

    def reservations(self) -> list[tuple[int, int]]:
        """The /memreserve/ entries, (address, size) in order."""
        return [tuple(self._fdt.get_mem_rsv(i)) for i in range(self._fdt.num_mem_rsv())]

    def add_reservation(self, address: int, size: int) -> None:
        """Append a /memreserve/ entry (``fdt_add_mem_rsv``)."""
        self._grow_for(lambda quiet: self._raw(libfdt.fdt_add_mem_rsv, quiet, address, size),
                       FDT_RESERVE_ENTRY, "/memreserve/", None)

    def delete_reservation(self, address: int, size: int) -> bool:
        """Delete the first /memreserve/ entry that is exactly (address, size); False when none is."""
        for i, entry in enumerate(self.reservations()):
            if entry == (address, size):
                self._call(lambda: self._raw(libfdt.fdt_del_mem_rsv, (), i), "/memreserve/", None)
                return True
        return False

    def _raw(self, fn, quiet, *args) -> int:
        """A libfdt function that edits the blob in place, on a copy that then becomes the blob."""
        buf = self._fdt.as_bytearray()
        err = fn(buf, *args)
        if err and -err not in quiet:
            raise libfdt.FdtException(err)
        if not err:
            self._fdt = libfdt.Fdt(buf)
        return err

    def blob(self) -> bytes:
        """The edited DTB, packed (no free space left at the end)."""
        self._call(self._fdt.pack, "/", None)
        return bytes(self._fdt.as_bytearray())

    def _grow_for(self, op, extra: int, path: str, name: str | None):
        """``op(quiet)``; when the blob is full, grow it by ``extra`` (and alignment) and try once more."""
        result = self._call(lambda: op((libfdt.NOSPACE,)), path, name)
        if result != -libfdt.NOSPACE:
            return result
        self._call(lambda: self._fdt.resize(self._fdt.totalsize() + extra + 8), path, name)
        return self._call(lambda: op(()), path, name)

    def _call(self, op, path: str, name: str | None):
        try:
            return op()
        except libfdt.FdtException as e:
            where = path if name is None else f"{path} {name}"
            raise FormatError(LAYER, f"libfdt: {libfdt.fdt_strerror(e.err)}", field=where) from e


@dataclass(frozen=True)
class StdoutDevice:
    """The console device ``/chosen/stdout-path`` names: its node, ``compatible`` strings, the CPU
    address of its first ``reg`` entry (translated through every parent's ``ranges``), and the
    8250 binding's ``reg-shift``/``reg-io-width`` (defaults 0 and 1)."""

    path: str
    compatible: tuple[str, ...]
    address: int
    reg_shift: int = 0
    reg_io_width: int = 1


def stdout_device(dtb: bytes) -> StdoutDevice | None:
    """The device ``/chosen/stdout-path`` (or the older ``linux,stdout-path``) names, None when
    the DTB names none or the node has no address.

    The path may be an alias and may carry options after a colon
    ("serial0:115200n8", chosen.yaml); libfdt resolves aliases.
    """
    f = _open(dtb, lambda why: FormatError(LAYER, why, field="magic", offset=0))
    chosen_off = f.path_offset("/chosen", (libfdt.NOTFOUND,))
    if chosen_off < 0:
        return None
    raw = None
    for name in ("stdout-path", "linux,stdout-path"):
        raw = f.getprop(chosen_off, name, (libfdt.NOTFOUND,))
        if not isinstance(raw, int):
            break
    if isinstance(raw, int) or raw is None:
        return None
    target = bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace").split(":", 1)[0]
    off = f.path_offset(target, (libfdt.NOTFOUND, libfdt.BADPATH))
    if off < 0:
        return None
    address = _cpu_address(f, off)
    if address is None:
        return None
    props = dict(_props(f, off))
    compatible = tuple(s.decode("ascii", "replace") for s in props.get("compatible", b"").split(b"\0") if s)
    shift = props.get("reg-shift")
    width = props.get("reg-io-width")
    return StdoutDevice(f.get_path(off), compatible, address,
                        struct.unpack(">I", shift[:4])[0] if shift and len(shift) >= 4 else 0,
                        struct.unpack(">I", width[:4])[0] if width and len(width) >= 4 else 1)


def _cpu_address(f: libfdt.Fdt, off: int) -> int | None:
    """The CPU address of node ``off``'s first ``reg`` entry: the bus address translated through each
    ancestor's ``ranges`` (Devicetree Specification 2.3.8); None where a bus does not map it."""
    parent = f.parent_offset(off)
    reg = f.getprop(off, "reg", (libfdt.NOTFOUND,))
    if isinstance(reg, int):
        return None
    ac, sc = _node_cells(f, parent)
    if len(reg) < 4 * (ac + sc) or ac == 0:
        return None
    addr = int.from_bytes(bytes(reg)[:4 * ac], "big")
    node = parent
    while node != 0:  # the root's children are CPU addresses
        bus = f.parent_offset(node)
        ranges = f.getprop(node, "ranges", (libfdt.NOTFOUND,))
        if isinstance(ranges, int):
            return None  # no ranges: the bus does not map into its parent's space
        child_ac, child_sc = _node_cells(f, node)
        addr = _translate(bytes(ranges), addr, child_ac, _node_cells(f, bus)[0], child_sc)
        if addr is None:
            return None
        node = bus
    return addr


def _node_cells(f: libfdt.Fdt, off: int) -> tuple[int, int]:
    """(#address-cells, #size-cells) a node gives its children (defaults 2 and 1)."""
    def cells(name: str, default: int) -> int:
        raw = f.getprop(off, name, (libfdt.NOTFOUND,))
        return default if isinstance(raw, int) or len(raw) < 4 else struct.unpack(">I", bytes(raw)[:4])[0]
    return cells("#address-cells", 2), cells("#size-cells", 1)


def _translate(ranges: bytes, addr: int, child_ac: int, parent_ac: int, child_sc: int) -> int | None:
    """``addr`` in a bus's space mapped by its ``ranges`` into the parent's (empty: identity)."""
    if not ranges:
        return addr
    width = 4 * (child_ac + parent_ac + child_sc)
    for at in range(0, len(ranges) - width + 1, width):
        child = int.from_bytes(ranges[at:at + 4 * child_ac], "big")
        parent = int.from_bytes(ranges[at + 4 * child_ac:at + 4 * (child_ac + parent_ac)], "big")
        size = int.from_bytes(ranges[at + 4 * (child_ac + parent_ac):at + width], "big")
        if child <= addr < child + size:
            return parent + addr - child
    return None

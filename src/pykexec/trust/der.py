"""A small, strict DER reader (ITU-T X.690 §8 and §10), enough for Authenticode.

Only definite lengths, in their shortest form, are accepted (DER §10.1).
Every element keeps the exact bytes it was read from, because CMS signatures
are checked over those bytes (RFC 5652 §5.4: the signed attributes are
hashed as the DER encoding of a SET OF, tag 0x31).

Elements are read one level at a time (:meth:`Element.children`) and the
callers descend the fixed shape of a SignedData, so however deeply an input
nests, nothing here recurses into it: there is no depth limit to enforce.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError

# Universal tags (X.690 §8.1.2, X.680 §8.4)
INTEGER, OCTET_STRING, NULL, OID, SEQUENCE, SET = 0x02, 0x04, 0x05, 0x06, 0x30, 0x31


@dataclass(frozen=True)
class Element:
    """One TLV: its identifier octet, the whole encoding and where the value starts."""

    tag: int
    raw: bytes
    header: int

    @property
    def value(self) -> bytes:
        return self.raw[self.header:]

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def children(self, layer: str = "der") -> list["Element"]:
        if not self.constructed:
            raise FormatError(layer, f"expected a constructed element, found tag {self.tag:#04x}")
        return read_all(self.value, layer)

    def expect(self, tag: int, what: str, layer: str = "der") -> "Element":
        if self.tag != tag:
            raise FormatError(layer, f"{what}: expected tag {tag:#04x}, found {self.tag:#04x}")
        return self


def read(data: bytes, offset: int = 0, layer: str = "der") -> Element:
    """The element that starts at ``offset``."""
    if offset + 2 > len(data):
        raise FormatError(layer, "truncated element header", offset=offset)
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise FormatError(layer, f"high-tag-number form {tag:#04x} is not used here", offset=offset)
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise FormatError(layer, "indefinite length is not DER", offset=offset)
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise FormatError(layer, f"length of {count} octets is not supported", offset=offset)
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise FormatError(layer, "length not in its shortest form (not DER)", offset=offset)
        pos += count
    if pos + length > len(data):
        raise FormatError(layer, f"element of {length} bytes runs past the end of its "
                          f"{len(data) - offset}-byte container", offset=offset)
    return Element(tag, bytes(data[offset:pos + length]), pos - offset)


def read_all(data: bytes, layer: str = "der") -> list[Element]:
    """The elements that exactly fill ``data``."""
    out, pos = [], 0
    while pos < len(data):
        el = read(data, pos, layer)
        out.append(el)
        pos += len(el.raw)
    return out


def read_one(data: bytes, layer: str = "der") -> Element:
    """``data`` must be exactly one element."""
    el = read(data, 0, layer)
    if len(el.raw) != len(data):
        raise FormatError(layer, f"{len(data) - len(el.raw)} bytes follow the DER element",
                          offset=len(el.raw))
    return el


def oid(el: Element, layer: str = "der") -> str:
    """Dotted form of an OBJECT IDENTIFIER (X.690 §8.19)."""
    el.expect(OID, "object identifier", layer)
    body = el.value
    if not body or body[-1] & 0x80:
        raise FormatError(layer, "malformed object identifier")
    arcs, n = [], 0
    for b in body:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(n)
            n = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def integer(el: Element, layer: str = "der") -> int:
    el.expect(INTEGER, "integer", layer)
    if not el.value:
        raise FormatError(layer, "empty integer")
    return int.from_bytes(el.value, "big", signed=True)


def algorithm(el: Element, layer: str = "der") -> str:
    """The OID of an AlgorithmIdentifier (RFC 5280 §4.1.1.2); parameters are not used."""
    kids = el.expect(SEQUENCE, "AlgorithmIdentifier", layer).children(layer)
    if not kids:
        raise FormatError(layer, "empty AlgorithmIdentifier")
    return oid(kids[0], layer)

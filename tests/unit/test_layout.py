"""Declarative layouts: one table per header, bounds-checked reads that name the field."""

from __future__ import annotations

import pytest

from pykexec.errors import FormatError
from pykexec.layout import Field, Layout

L = Layout("demo", [Field("magic", 0, "4s"), Field("a", 4, "H"), Field("b", 6, "I"), Field("c", 10, "Q")])
DATA = b"DEMO" + (0x1234).to_bytes(2, "little") + (0xDEADBEEF).to_bytes(4, "little") + (7).to_bytes(8, "little")


def test_size_and_offsets():
    assert L.size == 18
    assert [L.offset(n) for n in ("magic", "a", "b", "c")] == [0, 4, 6, 10]
    assert Field("x", 0, "Q").size == 8


def test_get_and_unpack():
    assert L.get(DATA, "b") == 0xDEADBEEF
    assert L.unpack(DATA) == {"magic": b"DEMO", "a": 0x1234, "b": 0xDEADBEEF, "c": 7}
    assert L.unpack(DATA, upto=10) == {"magic": b"DEMO", "a": 0x1234, "b": 0xDEADBEEF}
    assert L.get(b"xx" + DATA, "a", base=2) == 0x1234
    assert L.get(memoryview(DATA), "c") == 7


def test_big_endian():
    be = Layout("demo", list(L.fields.values()), endian=">")
    assert be.get(DATA, "a") == 0x3412


@pytest.mark.parametrize("length", range(len(DATA)))
def test_short_buffer_names_layer_field_and_offset(length):
    with pytest.raises(FormatError) as info:
        L.unpack(DATA[:length])
    err = info.value
    assert err.layer == "demo" and err.field in L.fields and err.offset == L.offset(err.field)
    assert "truncated" in str(err) and f"at offset {err.offset:#x}" in str(err)


@pytest.mark.parametrize("base", [-5, -100, 1 << 40])
def test_out_of_range_base(base):
    with pytest.raises(FormatError):
        L.get(DATA, "a", base=base)

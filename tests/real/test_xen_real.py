"""Xen 4.17's xen-4.17-amd64.gz: a gzip'd 32-bit ELF carrying Multiboot 1 and Multiboot 2 headers."""

from __future__ import annotations

import gzip

import pytest

from . import oracles as o
from .helpers import formats, inspect_json, num

pytestmark = pytest.mark.real


def test_xen_chain_and_multiboot_headers(xen_gz):
    raw = xen_gz.read_bytes()
    elf = gzip.decompress(raw)
    facts = o.elf_facts(elf)
    mb = o.multiboot_headers(elf)
    assert set(mb) == {1, 2}, "the material should carry both Multiboot headers"

    doc = inspect_json(xen_gz)
    assert formats(doc) == ["gzip", "elf"]
    comp, layer = doc["layers"]
    assert comp["algorithm"] == "gzip"
    assert num(comp["decompressed_size"]) == len(elf)
    assert layer.get("class") == facts["class"], "elf layer: 'class' must be 32 or 64"
    assert o.machine_matches(layer["machine"], facts["e_machine"]), layer["machine"]
    assert num(layer["entry"]) == facts["entry"]

    listed = o.multiboot_entries(layer.get("multiboot"))
    assert set(listed) == {1, 2}, f"elf layer should list Multiboot 1 and 2: {layer.get('multiboot')!r}"
    for version, offset in listed.items():
        if offset is not None:
            assert num(offset) == mb[version], f"Multiboot {version} header offset"

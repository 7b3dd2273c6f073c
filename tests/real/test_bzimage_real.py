"""Real x86 bzImages: Debian bookworm cloud and signed 6.1 kernels, sid's 7.x cloud kernel, iPXE.

Oracles: header bytes at the boot-protocol offsets, pefile, and the kernel
source's own scripts/extract-vmlinux.
"""

from __future__ import annotations

import hashlib

import pytest

from . import oracles as o
from .helpers import extract, formats, inspect_json, num

pytestmark = pytest.mark.real

CASES = {
    "bookworm-cloud": "bookworm_cloud",
    "bookworm-signed": "bookworm_signed",
    "sid-cloud": "sid_cloud",
}


class _Image(tuple):
    """(name, path, bytes), shown by name in failure reports."""

    def __repr__(self):
        return f"<{self[0]} {self[1].name}>"


@pytest.fixture(params=sorted(CASES), scope="module")
def bz(request):
    """(name, path, bytes) of one real bzImage."""
    path = request.getfixturevalue(CASES[request.param])
    return _Image((request.param, path, path.read_bytes()))


@pytest.fixture(scope="module")
def vmlinux_of(extract_vmlinux):
    memo = {}

    def get(path):
        if path not in memo:
            memo[path] = extract_vmlinux(path)
        return memo[path]

    return get


@pytest.fixture(scope="module")
def inspected():
    memo = {}

    def get(path):
        if path not in memo:
            memo[path] = inspect_json(path)
        return memo[path]

    return get


def test_inspect_top_level(bz, inspected):
    _, path, data = bz
    doc = inspected(path)
    assert doc["size"] == len(data)
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert str(doc["path"]).endswith(path.name)


def test_layer_chain(bz, inspected):
    name, path, data = bz
    algo = o.payload_algorithm(data)
    if name == "sid-cloud":
        assert algo == "zstd", "sid's 7.x cloud kernel was expected to have a zstd payload"
    assert formats(inspected(path)) == ["bzimage", algo, "elf"]


def test_bzimage_fields_match_header_bytes(bz, inspected):
    _, path, data = bz
    want = o.bzimage_header(data)
    layer = inspected(path)["layers"][0]
    assert layer["format"] == "bzimage"
    assert layer["arch"] in ("x86_64", "x86", "x86-64", "amd64", "i386")
    assert layer["version"] in o.version_strings(want["protocol"])
    assert layer["version"] == "2.15"
    for field in ("setup_sects", "loadflags", "kernel_alignment", "relocatable_kernel", "xloadflags",
                  "cmdline_size", "init_size", "pref_address", "payload_offset", "payload_length"):
        assert field in layer, f"bzimage layer lacks {field!r}"
        assert num(layer[field]) == want[field], field


def test_pe_and_authenticode_match_pefile(bz, inspected):
    _, path, _ = bz
    want = o.pe_facts(path)
    layer = inspected(path)["layers"][0]
    assert layer["pe_header"] is want["pe_header"]
    assert layer["authenticode"] is want["authenticode"]


def test_signed_kernel_is_pe_with_authenticode(bookworm_signed, inspected):
    assert o.pe_facts(bookworm_signed) == {"pe_header": True, "authenticode": True}
    layer = inspected(bookworm_signed)["layers"][0]
    assert layer["pe_header"] is True
    assert layer["authenticode"] is True


def test_compression_layer_sizes(bz, inspected, vmlinux_of):
    _, path, data = bz
    comp = inspected(path)["layers"][1]
    assert comp["algorithm"] == o.payload_algorithm(data)
    assert num(comp["decompressed_size"]) == len(vmlinux_of(path))
    # the stream may leave out the 4-byte decompressed size that the kernel build appends
    assert len(o.payload(data)) - 4 <= num(comp["compressed_size"]) <= len(o.payload(data))


def test_elf_layer_matches_vmlinux(bz, inspected, vmlinux_of):
    _, path, _ = bz
    want = o.elf_facts(vmlinux_of(path))
    elf = inspected(path)["layers"][2]
    assert elf["format"] == "elf"
    assert elf.get("class") == want["class"] == 64, "elf layer: 'class' must be 64"
    assert o.machine_matches(elf["machine"], want["e_machine"]), elf["machine"]
    assert num(elf["entry"]) == want["entry"]
    got = [
        {**{k: num(s[k]) for k in ("p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz")},
         "p_type": o.p_type_value(s["p_type"])}
        for s in elf["segments"]
    ]
    assert got == want["segments"]


def test_extract_vmlinux_equals_extract_vmlinux_script(bz, vmlinux_of, tmp_path):
    _, path, data = bz
    out = extract(path, tmp_path / "out")
    assert (out / "kernel").read_bytes() == data, "a bzImage must be handed on unchanged"
    got = (out / "vmlinux").read_bytes()
    want = vmlinux_of(path)
    assert len(got) == len(want)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()


# --------------------------------------------------------------------------
# iPXE's ipxe.lkrn: a bzImage (boot protocol 2.07) that is not a Linux kernel


def test_ipxe_lkrn_is_bzimage(ipxe_lkrn):
    data = ipxe_lkrn.read_bytes()
    want = o.bzimage_header(data)
    doc = inspect_json(ipxe_lkrn)
    layer = doc["layers"][0]
    assert layer["format"] == "bzimage"
    assert layer["version"] in o.version_strings(want["protocol"])
    assert num(layer["setup_sects"]) == want["setup_sects"]
    assert num(layer["loadflags"]) == want["loadflags"]


def test_ipxe_lkrn_extract_keeps_kernel(ipxe_lkrn, tmp_path):
    out = extract(ipxe_lkrn, tmp_path / "out")
    assert (out / "kernel").read_bytes() == ipxe_lkrn.read_bytes()

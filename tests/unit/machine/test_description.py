"""Machine descriptions: schema-1 JSON and iomem dumps, and the errors for broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pykexec.errors import MachineDescriptionError
from pykexec.machine import Machine, Range, TypedRange, from_json, load, loads, to_json

DATA = Path(__file__).resolve().parents[2] / "data" / "machines"


def full_machine() -> Machine:
    return Machine(
        arch="x86_64", memory=(TypedRange(0x1000, 0x9F000, "System RAM"),
                               TypedRange(0x100000, 0x3FF00000, "System RAM"),
                               TypedRange(0x2F000000, 0x10000000, "Crash kernel", 1)),
        memory_source="iomem", crashk_res=Range(0x2F000000, 0x10000000), kho_active=True,
        kho_scratch=(Range(0x1000000, 0x1000000),), kernel_release="6.1.0", lockdown="integrity",
        kexec_loaded=False, kexec_crash_loaded=True, kexec_crash_size=0x10000000, hypervisor="xen",
        xen_crash_area=Range(0x10000000, 0x1000000), possible_cpus=4, mem_total=1 << 30, efi=True,
        efi_runtime_map_entries=6, efi_memdesc_size=48, fdt_size=None, x86_5level=False,
        kernel_config=(("CONFIG_KEXEC_FILE", "y"),), unreadable=(("/x", "why"),), notes=("n",))


def test_json_round_trip():
    m = full_machine()
    assert from_json(json.loads(json.dumps(to_json(m)))) == m


def test_json_round_trip_with_the_boot_dtb():
    from .dtb import arm64_virt
    m = Machine(arch="arm64", fdt=arm64_virt(), fdt_size=len(arm64_virt()), rng_ready=False)
    doc = json.loads(json.dumps(to_json(m)))
    assert from_json(doc) == m and from_json(doc).fdt == arm64_virt()


def test_iomem_dump_is_auto_detected():
    m = load(DATA / "qemu-q35-1g-crashkernel256m-debian6.1.iomem")
    assert m.memory_source == "iomem" and m.crashk_res == Range(0x2F000000, 0x10000000) and m.arch is None


def test_unprivileged_dump_is_refused():
    with pytest.raises(MachineDescriptionError, match="CAP_SYS_ADMIN"):
        load(DATA / "dev-host-unprivileged.iomem")


@pytest.mark.parametrize("doc, key, words", [
    ({}, "schema", "missing"),
    ({"schema": 2}, "schema", "expected 1"),
    ({"schema": 1, "memroy": []}, "memroy", "unknown key"),
    ({"schema": 1, "memory": [{"start": "0x1000", "size": "zz", "type": "System RAM"}]},
     "memory[0].size", "expected an integer"),
    ({"schema": 1, "memory": [{"start": 1, "size": 2}]}, "memory[0].type", "missing"),
    ({"schema": 1, "memory": [{"start": 1, "size": 2, "type": "x", "depth": 1}]}, "memory[0].depth",
     "no parent"),
    ({"schema": 1, "crash": {"high": {"start": 1}}}, "crash.high.size", "missing"),
    ({"schema": 1, "state": {"lockdown": "total"}}, "state.lockdown", "expected one of"),
    ({"schema": 1, "state": {"possible_cpus": -1}}, "state.possible_cpus", "negative"),
    ({"schema": 1, "page_size": 8192}, "page_size", "4096"),
    ({"schema": 1, "fdt": "not base64!"}, "fdt", "not base64"),
    ({"schema": 1, "fdt": "AAAAAA=="}, "fdt", "0xd00dfeed"),
    ({"schema": 1, "state": {"rng_ready": "yes"}}, "state.rng_ready", "unexpected value"),
    ({"schema": 1, "kho": {"scratch": [{"start": 0, "size": 1, "x": 2}]}}, "kho.scratch[0].x", "unknown"),
])
def test_bad_json_names_the_key(doc, key, words):
    with pytest.raises(MachineDescriptionError) as e:
        loads(json.dumps(doc), source="m.json")
    assert e.value.key == key and words in str(e.value) and e.value.exit_code == 2


def test_invalid_json_names_the_line():
    with pytest.raises(MachineDescriptionError) as e:
        loads('{"schema": 1,\n "arch": }', source="m.json")
    assert e.value.line == 2


def test_neither_json_nor_iomem():
    with pytest.raises(MachineDescriptionError, match="neither"):
        loads("\nhello\n")

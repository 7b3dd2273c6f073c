"""Machine descriptions on disk: the JSON of ``pykexec machine --json``, or a plain iomem dump.

The JSON schema is documented in docs/machine-schema.md; ``"schema": 1`` is
required.  Addresses and sizes may be integers or strings in any base Python's
``int(s, 0)`` reads ("0x1000", "4096").  Unknown keys are errors, so a typo
does not silently describe a different machine.  A file whose first line looks
like ``00001000-0009fbff : System RAM`` is read as ``/proc/iomem`` text.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from ..errors import MachineDescriptionError
from . import iomem as iomem_mod
from .model import ARM64_GRANULES, Machine, crash_from_iomem, normalize_arch
from .ranges import Range, TypedRange

SCHEMA_VERSION = 1
TOP_KEYS = {"schema", "arch", "page_size", "kernel_release", "memory_source", "memory", "crash", "kho",
            "memblock_free", "state", "fdt", "xen", "kernel_config", "unreadable", "notes"}
STATE_KEYS = {"lockdown": (str, type(None)), "kexec_loaded": (bool, type(None)),
              "kexec_crash_loaded": (bool, type(None)), "kexec_crash_size": "int?",
              "hypervisor": (str, type(None)), "possible_cpus": "int?", "mem_total": "int?",
              "efi": (bool, type(None)), "efi_runtime_map_entries": "int?", "efi_memdesc_size": "int?",
              "fdt_size": "int?", "x86_5level": (bool, type(None)),
              "cpu_page_sizes": (list, type(None)), "rng_ready": (bool, type(None))}
LOCKDOWN_MODES = {"none", "integrity", "confidentiality"}
XEN_KEYS = ("dom0", "crash_area", "image", "cpu_notes", "vmcoreinfo")


def load(path: str | Path) -> Machine:
    """Read a machine description file (JSON or iomem text, auto-detected)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as e:
        raise MachineDescriptionError(source, f"not text: {e.reason} at byte {e.start}") from e
    return loads(text, source=source)


def loads(text: str, *, source: str = "<description>") -> Machine:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise MachineDescriptionError(source, f"invalid JSON: {e.msg}", line=e.lineno) from e
        return from_json(doc, source=source)
    if iomem_mod.looks_like_iomem(text):
        return from_iomem(text, source=source)
    first = next((i for i, line in enumerate(text.splitlines(), 1) if line.strip()), 1)
    raise MachineDescriptionError(source, "neither a JSON machine description (starting with '{') nor "
                                  "an iomem dump ('START-END : NAME' lines)", line=first)


def from_iomem(text: str, *, source: str = "<iomem>", arch: str | None = None) -> Machine:
    parsed = iomem_mod.parse(text, source=source)
    if parsed.addresses_hidden:
        raise MachineDescriptionError(source, "every address is zero: this dump was taken without "
                                      "CAP_SYS_ADMIN; take it as root")
    if not parsed.resources:
        raise MachineDescriptionError(source, "no resources")
    high, low = crash_from_iomem(parsed.resources)
    return Machine(arch=arch, memory=parsed.resources, memory_source="iomem", crashk_res=high,
                   crashk_low_res=low, kho_active=None,
                   notes=(f"described by the iomem dump {source}: architecture, kernel version and "
                          "kexec state are unknown",))


# -- JSON -----------------------------------------------------------------------------

def to_json(machine: Machine) -> dict[str, Any]:
    """The machine as schema-1 JSON (addresses as hex strings)."""
    return {
        "schema": SCHEMA_VERSION,
        "arch": machine.arch,
        "page_size": machine.page_size,
        "kernel_release": machine.kernel_release,
        "memory_source": machine.memory_source,
        "memory": [{"start": hex(r.start), "size": hex(r.size), "type": r.type, "depth": r.depth}
                   for r in machine.memory],
        "crash": {"high": _range_json(machine.crashk_res), "low": _range_json(machine.crashk_low_res)},
        "kho": {"active": machine.kho_active, "scratch": [_range_json(r) for r in machine.kho_scratch]},
        "memblock_free": (None if machine.memblock_free is None
                          else [_range_json(r) for r in machine.memblock_free]),
        "state": {"lockdown": machine.lockdown, "kexec_loaded": machine.kexec_loaded,
                  "kexec_crash_loaded": machine.kexec_crash_loaded,
                  "kexec_crash_size": machine.kexec_crash_size, "hypervisor": machine.hypervisor,
                  "possible_cpus": machine.possible_cpus, "mem_total": machine.mem_total,
                  "efi": machine.efi, "efi_runtime_map_entries": machine.efi_runtime_map_entries,
                  "efi_memdesc_size": machine.efi_memdesc_size, "fdt_size": machine.fdt_size,
                  "x86_5level": machine.x86_5level,
                  "cpu_page_sizes": None if machine.cpu_page_sizes is None else list(machine.cpu_page_sizes),
                  "rng_ready": machine.rng_ready},
        "fdt": None if machine.fdt is None else base64.b64encode(machine.fdt).decode(),
        "xen": {"dom0": machine.xen_dom0, "crash_area": _range_json(machine.xen_crash_area),
                "image": _range_json(machine.xen_image),
                "cpu_notes": [_range_json(r) for r in machine.xen_cpu_notes],
                "vmcoreinfo": _range_json(machine.xen_vmcoreinfo)},
        "kernel_config": dict(machine.kernel_config),
        "unreadable": [{"what": w, "why": y} for w, y in machine.unreadable],
        "notes": list(machine.notes),
    }


def _range_json(r: Range | None) -> dict[str, str] | None:
    return None if r is None else {"start": hex(r.start), "size": hex(r.size)}


def from_json(doc: Any, *, source: str = "<json>") -> Machine:
    """Validate and convert schema-1 JSON; errors name the key (``memory[3].start``)."""
    def fail(key: str, reason: str) -> MachineDescriptionError:
        return MachineDescriptionError(source, reason, key=key)

    if not isinstance(doc, dict):
        raise fail("$", f"expected a JSON object, found {type(doc).__name__}")
    if "schema" not in doc:
        raise fail("schema", f"missing; this reader understands \"schema\": {SCHEMA_VERSION}")
    if doc["schema"] != SCHEMA_VERSION:
        raise fail("schema", f"expected {SCHEMA_VERSION}, found {doc['schema']!r}")
    for key in doc:
        if key not in TOP_KEYS:
            raise fail(key, f"unknown key; known keys are {', '.join(sorted(TOP_KEYS))}")

    def integer(value: Any, key: str, *, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool):
            raise fail(key, f"expected an integer or a numeric string, found {value!r}")
        if isinstance(value, int):
            result = value
        elif isinstance(value, str):
            try:
                result = int(value, 0)
            except ValueError:
                raise fail(key, f"expected an integer such as 4096 or \"0x1000\", found {value!r}") from None
        else:
            raise fail(key, f"expected an integer or a numeric string, found {type(value).__name__}")
        if result < 0:
            raise fail(key, f"must not be negative, found {result}")
        return result

    def range_of(value: Any, key: str) -> Range | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise fail(key, f"expected {{\"start\": ..., \"size\": ...}}, found {type(value).__name__}")
        extra = set(value) - {"start", "size"}
        if extra:
            raise fail(f"{key}.{sorted(extra)[0]}", "unknown key; a range has start and size")
        for k in ("start", "size"):
            if k not in value:
                raise fail(f"{key}.{k}", "missing")
        return Range(integer(value["start"], f"{key}.start"), integer(value["size"], f"{key}.size"))

    def range_list(value: Any, key: str) -> tuple[Range, ...]:
        if not isinstance(value, list):
            raise fail(key, f"expected a list of ranges, found {type(value).__name__}")
        return tuple(range_of(v, f"{key}[{i}]") for i, v in enumerate(value))

    def section(name: str) -> dict:
        value = doc.get(name) or {}
        if not isinstance(value, dict):
            raise fail(name, f"expected an object, found {type(value).__name__}")
        return value

    arch = doc.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise fail("arch", f"expected a string such as \"x86_64\", found {arch!r}")
    page_size = integer(doc.get("page_size", 4096), "page_size")
    if page_size not in (4096, 16384, 65536):
        raise fail("page_size", f"expected 4096, 16384 or 65536, found {page_size}")

    memory: list[TypedRange] = []
    raw_memory = doc.get("memory", [])
    if not isinstance(raw_memory, list):
        raise fail("memory", f"expected a list, found {type(raw_memory).__name__}")
    for i, entry in enumerate(raw_memory):
        key = f"memory[{i}]"
        if not isinstance(entry, dict):
            raise fail(key, f"expected an object, found {type(entry).__name__}")
        extra = set(entry) - {"start", "size", "type", "depth"}
        if extra:
            raise fail(f"{key}.{sorted(extra)[0]}", "unknown key; a memory entry has start, size, type, depth")
        for k in ("start", "size", "type"):
            if k not in entry:
                raise fail(f"{key}.{k}", "missing")
        if not isinstance(entry["type"], str) or not entry["type"]:
            raise fail(f"{key}.type", f"expected a type string such as \"System RAM\", found {entry['type']!r}")
        depth = integer(entry.get("depth", 0), f"{key}.depth")
        if depth > (memory[-1].depth + 1 if memory else 0):
            raise fail(f"{key}.depth", f"depth {depth} has no parent (the previous entry is at depth "
                       f"{memory[-1].depth if memory else 'none'})")
        memory.append(TypedRange(integer(entry["start"], f"{key}.start"),
                                 integer(entry["size"], f"{key}.size"), entry["type"], depth))

    crash = section("crash")
    for k in crash:
        if k not in ("high", "low"):
            raise fail(f"crash.{k}", "unknown key; crash has high and low")
    kho = section("kho")
    for k in kho:
        if k not in ("active", "scratch"):
            raise fail(f"kho.{k}", "unknown key; kho has active and scratch")
    if not isinstance(kho.get("active", False), (bool, type(None))):
        raise fail("kho.active", f"expected true, false or null, found {kho['active']!r}")
    state = section("state")
    for k, v in state.items():
        if k not in STATE_KEYS:
            raise fail(f"state.{k}", f"unknown key; state has {', '.join(sorted(STATE_KEYS))}")
        if STATE_KEYS[k] == "int?":
            integer(v, f"state.{k}", optional=True)
        elif not isinstance(v, STATE_KEYS[k]):
            raise fail(f"state.{k}", f"unexpected value {v!r}")
    if any(v not in ARM64_GRANULES for v in state.get("cpu_page_sizes") or ()):
        raise fail("state.cpu_page_sizes", f"expected page sizes among {', '.join(map(str, ARM64_GRANULES))}, "
                   f"found {state['cpu_page_sizes']!r}")
    if state.get("lockdown") not in LOCKDOWN_MODES | {None}:
        raise fail("state.lockdown", f"expected one of {', '.join(sorted(LOCKDOWN_MODES))}, "
                   f"found {state['lockdown']!r}")
    xen = section("xen")
    for k in xen:
        if k not in XEN_KEYS:
            raise fail(f"xen.{k}", f"unknown key; xen has {', '.join(XEN_KEYS)}")
    if not isinstance(xen.get("dom0"), (bool, type(None))):
        raise fail("xen.dom0", f"expected true, false or null, found {xen['dom0']!r}")
    config = section("kernel_config")
    for k, v in config.items():
        if not isinstance(v, str):
            raise fail(f"kernel_config.{k}", f"expected the config value as a string, found {v!r}")
    unreadable = doc.get("unreadable", [])
    if not isinstance(unreadable, list) or not all(
            isinstance(u, dict) and set(u) == {"what", "why"} for u in unreadable):
        raise fail("unreadable", "expected a list of {\"what\": ..., \"why\": ...}")
    notes = doc.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise fail("notes", "expected a list of strings")
    memblock = doc.get("memblock_free")
    fdt = _fdt_blob(doc.get("fdt"), fail)
    memory_t = tuple(memory)
    high, low = range_of(crash.get("high"), "crash.high"), range_of(crash.get("low"), "crash.low")
    if "crash" not in doc:
        high, low = crash_from_iomem(memory_t)

    def opt_int(k: str) -> int | None:
        return integer(state.get(k), f"state.{k}", optional=True)

    return Machine(
        arch=normalize_arch(arch), page_size=page_size, memory=memory_t,
        memory_source=str(doc.get("memory_source", "description")),
        crashk_res=high, crashk_low_res=low,
        kho_active=kho.get("active", False), kho_scratch=range_list(kho.get("scratch", []), "kho.scratch"),
        memblock_free=None if memblock is None else range_list(memblock, "memblock_free"),
        kernel_release=doc.get("kernel_release"), lockdown=state.get("lockdown"),
        kexec_loaded=state.get("kexec_loaded"), kexec_crash_loaded=state.get("kexec_crash_loaded"),
        kexec_crash_size=opt_int("kexec_crash_size"), hypervisor=state.get("hypervisor"),
        xen_dom0=xen.get("dom0"), xen_crash_area=range_of(xen.get("crash_area"), "xen.crash_area"),
        xen_image=range_of(xen.get("image"), "xen.image"),
        xen_cpu_notes=range_list(xen.get("cpu_notes", []), "xen.cpu_notes"),
        xen_vmcoreinfo=range_of(xen.get("vmcoreinfo"), "xen.vmcoreinfo"),
        possible_cpus=opt_int("possible_cpus"), mem_total=opt_int("mem_total"),
        efi=state.get("efi"), efi_runtime_map_entries=opt_int("efi_runtime_map_entries"),
        efi_memdesc_size=opt_int("efi_memdesc_size"), fdt_size=opt_int("fdt_size"),
        x86_5level=state.get("x86_5level"), fdt=fdt, rng_ready=state.get("rng_ready"),
        cpu_page_sizes=None if state.get("cpu_page_sizes") is None else tuple(state["cpu_page_sizes"]),
        kernel_config=tuple(sorted(config.items())),
        unreadable=tuple((u["what"], u["why"]) for u in unreadable), notes=tuple(notes))


def _fdt_blob(value: Any, fail) -> bytes | None:
    """``fdt``: the boot DTB in base64, checked for the FDT magic and a totalsize that fits."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail("fdt", f"expected the DTB as a base64 string, found {type(value).__name__}")
    try:
        blob = base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise fail("fdt", f"not base64: {e}") from None
    from . import fdt  # libfdt: only a description that carries a DTB
    total = fdt.totalsize(blob)
    if total is None:
        raise fail("fdt", "not a flattened device tree (no 0xd00dfeed magic at 0)")
    if total > len(blob):
        raise fail("fdt", f"totalsize {total} is larger than the {len(blob)}-byte blob")
    return blob

"""QEMU scenarios: every test here boots real kernels and is marked ``vm``.

Run them with ``.venv/bin/pytest tests/vm -m vm``.  Material that cannot be
fetched or built makes the tests fail (never skip); see tests/vm/harness.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from . import harness

_VM_DIR = Path(__file__).resolve().parent
_START = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: tests that boot kernels in QEMU (TCG)")
    config.stash[_START] = time.time()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _VM_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def vm_material() -> dict:
    """Host tools, the kernel and the cached base/pykexec layers, built once per session."""
    return harness.prepare()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    path = harness.material.cache_root() / "vm" / "vm-timings.json"
    start = config.stash.get(_START, None)
    if start is None or not path.exists():
        return
    try:
        records = json.loads(path.read_text())
    except ValueError:
        return
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start))
    mine = [r for r in records if r.get("when", "") >= since and r.get("pid") == os.getpid()]
    if not mine:
        return
    terminalreporter.section("VM wall times")
    for r in mine:
        flag = " TIMEOUT" if r.get("timed_out") else ""
        terminalreporter.write_line(f"{r['scenario']:<40} {r['seconds']:7.1f} s  (-m {r.get('memory')}){flag}")
    terminalreporter.write_line(f"{'total':<40} {sum(r['seconds'] for r in mine):7.1f} s")

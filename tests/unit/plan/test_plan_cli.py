"""The machine and plan verbs, wired into pykexec.cli the way the lead will wire them."""

from __future__ import annotations

import json

import pytest

from pykexec import cli
from pykexec.cli import plan as plan_cli
from tests import builders

from .conftest import DATA


@pytest.fixture
def main():
    return cli.main


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "vmlinuz"
    path.write_bytes(builders.bzimage(version=0x20F, setup_sects=39, init_size=0x3378000))
    return path


def test_shape():
    for name, (help_text, options) in plan_cli.COMMANDS.items():
        assert isinstance(help_text, str) and name in plan_cli.HANDLERS
        assert all(isinstance(flags, tuple) and isinstance(kw, dict) for flags, kw in options)


def test_machine_text_and_json(main, capsys):
    path = str(DATA / "qemu-q35-1g-crashkernel256m-debian6.1.iomem")
    assert main(["machine", "--machine", path]) == 0
    out = capsys.readouterr().out
    assert "crashk_res      0x00002f000000-0x00003effffff (256 MiB)" in out and "Crash kernel" in out
    assert main(["machine", "--json", "--machine", path]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 1 and doc["crash"]["high"] == {"start": "0x2f000000", "size": "0x10000000"}


def test_machine_of_this_host_runs(main, capsys):
    assert main(["machine"]) == 0
    assert "memory (" in capsys.readouterr().out


def test_plan_json(main, capsys, image, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(3000000))
    path = str(DATA / "qemu-q35-1g-crashkernel256m-debian6.1.iomem")
    assert main(["plan", str(image), "--machine", path, "--initrd", str(initrd), "--crash", "--json",
                 "--append", "console=ttyS0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"target", "crash", "entry", "cmdline", "segments", "violations"}
    assert doc["target"] == "linux-file" and doc["crash"] is True and doc["violations"] == []
    assert [s["role"] for s in doc["segments"]] == ["elfcorehdr", "purgatory", "boot-params", "kernel", "initrd"]
    assert doc["segments"][-1]["sha256"] is not None and doc["cmdline"].startswith("elfcorehdr=0x2f000000 ")


def test_plan_text_table(main, capsys, image):
    assert main(["plan", str(image), "--machine", str(DATA / "qemu-pc-1g-debian6.1.iomem"),
                 "--target", "linux-user", "--command-line", "quiet"]) == 0
    out = capsys.readouterr().out
    assert "linux-user load for x86_64" in out and "purgatory" in out and "command line: 'quiet'" in out


def test_plan_that_cannot_fit_exits_2(main, capsys, image):
    assert main(["plan", str(image), "--machine", str(DATA / "qemu-pc-1g-debian6.1.iomem"), "--crash"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pykexec: error: a crash load needs a crash region") and err.count("\n") == 1


def test_plan_that_would_be_refused_exits_2(main, capsys, image, tmp_path):
    doc = json.loads(json.dumps({"schema": 1, "arch": "x86_64", "state": {"lockdown": "integrity"},
                                 "memory": [{"start": "0x100000", "size": "0x3ff00000", "type": "System RAM"}]}))
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    assert main(["plan", str(image), "--machine", str(path), "--target", "linux-user"]) == 2
    err = capsys.readouterr().err
    assert "linux-user would refuse this load with EPERM" in err


def test_bad_description_exits_2(main, capsys, image, tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"schema": 1, "memory": [{"start": "x"}]}')
    assert main(["plan", str(image), "--machine", str(path)]) == 2
    assert "m.json key 'memory[0].size': missing" in capsys.readouterr().err
    assert main(["machine", "--machine", str(path)]) == 2

"""UKI add-ons (UAPI.5 "PE Addons"): recognised, parsed, and applied by prepare(addons=...)."""

from __future__ import annotations

import pytest

from pykexec import formats
from pykexec.errors import FormatError, UsageError
from pykexec.formats import uki_addon
from pykexec.formats.uki_addon import UkiAddon
from pykexec.formats.prepare import prepare
from tests import builders as b

from ..contract import outcome, parse_or_error, truncations, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection


@pytest.mark.parametrize("kw, sections", [
    ({"cmdline": "a=1"}, (".cmdline",)),
    ({"cmdline": None, "initrd": b"i"}, (".initrd",)),
    ({"cmdline": None, "ucode": b"u"}, (".ucode",)),
    ({"cmdline": None, "dtb": b"d"}, (".dtb",)),
    ({"cmdline": "x", "dtb": b"d", "ucode": b"u", "initrd": b"i"}, (".cmdline", ".dtb", ".ucode", ".initrd")),
])
def test_addon_recognised_and_parsed(kw, sections):
    layer = formats.identify(b.addon(**kw))
    assert isinstance(layer, UkiAddon) and layer.format == "uki-addon"
    assert layer.sections == (".text", ".sbat") + sections
    assert layer.cmdline == kw.get("cmdline")
    assert [l.format for l in formats.unwrap(b.addon(**kw))] == ["uki-addon"]


def test_a_pe_with_no_addon_sections_is_plain_pe():
    image = b.pe(b.stub_sections())
    assert not uki_addon.probe(image)
    assert formats.identify(image).format == "pe"


def test_signed_addon():
    assert uki_addon.parse(b.addon(signed=True)).signature is True


def test_prepare_applies_an_addon():
    u = b.uki(cmdline="root=/dev/sda", initrd=b"base-initrd")
    p = prepare(u, addons=(b.addon(cmdline="console=ttyS0", initrd=b"extra"),))
    assert p.cmdline == "root=/dev/sda console=ttyS0"
    assert [bytes(x) for x in p.initrds] == [b"base-initrd", b"extra"]


def test_addons_apply_in_order():
    u = b.uki(cmdline="base")
    p = prepare(u, addons=(b.addon(cmdline="one"), b.addon(cmdline="two"), b.addon(cmdline=None, dtb=b"d")))
    assert p.cmdline == "base one two"


def test_addon_to_a_uki_without_cmdline():
    p = prepare(b.uki(cmdline=None), addons=(b.addon(cmdline="only"),))
    assert p.cmdline == "only"


def test_addon_ucode_goes_before_the_ukis_ucode_and_every_initrd():
    """systemd-stub puts microcode from add-ons first (systemd PR #32463: "UKI addons,
    Global addons, UKI embedded"; uki_addon's docstring: ".ucode archives prepended")."""
    u = b.uki(ucode=b"uki-ucode", initrd=b"uki-initrd")
    p = prepare(u, addons=(b.addon(cmdline=None, ucode=b"addon-ucode", initrd=b"addon-initrd"),))
    assert [bytes(x) for x in p.initrds] == [b"addon-ucode", b"uki-ucode", b"uki-initrd", b"addon-initrd"]


@pytest.mark.parametrize("not_an_addon", [lambda: b.uki(), lambda: b.arm64_image(),
                                          lambda: b.pe([(".text", b"\xc3")])])
def test_an_addon_must_be_an_addon(not_an_addon):
    err = outcome(prepare, b.uki(), addons=(not_an_addon(),))
    assert isinstance(err, UsageError)


def test_garbage_addon():
    err = outcome(prepare, b.uki(), addons=(b"\0" * 100,))
    assert isinstance(err, FormatError) and "add-on" in str(err)


def test_addons_apply_only_to_ukis():
    assert isinstance(outcome(prepare, b.bzimage(), addons=(b.addon(),)), UsageError)


def test_truncation():
    image = b.addon(initrd=b"i" * 100)
    for n in truncations(image, 0x300, stride=8):
        assert isinstance(parse_or_error(uki_addon.parse, image[:n]), (UkiAddon, FormatError))
        unwrap_or_error(image[:n])

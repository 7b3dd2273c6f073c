"""Property tests: mutate a valid synthetic image of each format and unwrap it.

Whatever the mutation, only a PykexecError may escape, and each example must finish
within hypothesis' deadline (1 s).  Mutations are byte flips, truncations and
overwrites of 1/2/4/8-byte fields with boundary values, biased towards the headers.
The committed seed corpus (tests/fuzz/corpus/) is replayed too.

PYKEXEC_FUZZ_EXAMPLES raises the number of examples per format (default 25).  The default
run is derandomized, so the suite gives the same answer every time; setting the variable
makes the search random (a longer hunt for new bugs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykexec import formats
from pykexec.errors import FormatError, PykexecError
from pykexec.formats.prepare import Prepared, prepare
from tests import builders as b

from ..contract import FUZZ_LIMITS, outcome, unwrap_or_error

pytestmark = pytest.mark.usefixtures("frozen_gc")  # pefile gc.collect()s on every rejection

EXAMPLES = int(os.environ.get("PYKEXEC_FUZZ_EXAMPLES", "25"))
DERANDOMIZE = "PYKEXEC_FUZZ_EXAMPLES" not in os.environ
CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
SEEDS = {**b.samples(),
         "uki-profiles": b.uki(b.zboot(), machine=0xAA64, initrd=b"i" * 9, ucode=b"u",
                               profiles=[{"cmdline": "a"}, {"linux": b.arm64_image(), "initrd": b"j"}]),
         "bzimage-pe-signed": b.bzimage(pe=True, signed=True, compression="lz4"),
         "bzimage-2.04": b.bzimage(version=0x204),
         "zboot-lzo": b.zboot(compression="lzo"),
         "elf32-be": b.elf32(endian="big"),
         "xen": b.xen_like_elf()}

BOUNDARY = st.sampled_from([0, 1, 3, 4, 0x3F, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x1F1, 0x200, 0xFFFF,
                            0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF,
                            0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF])


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "flip", "field", "field", "truncate", "extend"]))
        if not data:
            break
        region = min(len(data), 0x300) if draw(st.booleans()) else len(data)  # headers, or anywhere
        at = draw(st.integers(0, max(region - 1, 0)))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "field":
            size = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.one_of(BOUNDARY, st.integers(0, (1 << 64) - 1),
                                   st.integers(0, len(data) + 16)))
            chunk = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            data[at:at + size] = chunk[:max(0, min(size, len(data) - at))]
        elif kind == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


def check(data: bytes) -> None:
    """Either a one-line FormatError naming a layer, or layers every one of which is a
    registered format, each wrapper's inner layer following it; and prepare() either
    refuses with a one-line PykexecError or hands over a kernel found on that chain."""
    layers = unwrap_or_error(data)
    if isinstance(layers, FormatError):
        assert layers.layer and "\n" not in str(layers), str(layers)
    else:
        assert layers and all(x.format in formats.NAMES for x in layers)
        assert all(outer.inner() is not None for outer in layers[:-1])
    result = outcome(prepare, data, limits=FUZZ_LIMITS)
    if isinstance(result, PykexecError):
        assert str(result) and "\n" not in str(result), str(result)
    else:
        assert isinstance(result, Prepared) and result.kernel_layer in result.layers
        assert len(result.kernel) > 0
        if isinstance(layers, list):  # the loader stops on the same chain inspect follows
            chain = [x.format for x in result.layers]
            assert chain == [x.format for x in layers[:len(chain)]] or chain[0] == "uki"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutations_only_raise_pykexec_errors(name):
    @settings(max_examples=EXAMPLES, deadline=1000, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(SEEDS[name]))
    def run(data):
        check(data)
    run()


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_random_prefixes_and_suffixes(name):
    seed = SEEDS[name]

    @settings(max_examples=max(5, EXAMPLES // 3), deadline=1000, derandomize=DERANDOMIZE,
              database=None)
    @given(st.binary(max_size=32), st.integers(0, len(seed)), st.binary(max_size=32))
    def run(prefix, cut, suffix):
        check(prefix + seed[:cut] + suffix)
    run()


def corpus_files():
    return sorted(p for p in CORPUS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_seed_corpus_replays(path):
    data = path.read_bytes()
    assert len(data) <= 16 << 10, "keep the committed corpus small"
    try:
        check(data)
    except PykexecError:
        pytest.fail("check() must not let a PykexecError through")


def test_the_corpus_covers_every_format():
    from pykexec import formats
    have = {p.parent.name for p in corpus_files()}
    assert set(formats.NAMES) <= have, sorted(set(formats.NAMES) - have)

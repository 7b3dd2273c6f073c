"""The parser contract every test of malformed input checks.

Every input either parses or raises a :class:`pykexec.errors.PykexecError`
subclass; any other exception escaping is a bug.  Bad input specifically is
a :class:`FormatError` (or a UsageError for a bad request).
"""

from __future__ import annotations

from pykexec import formats
from pykexec.errors import FormatError, PykexecError
from pykexec.limits import Limits

#: small enough that a mutated header cannot make a test slow
FUZZ_LIMITS = Limits(max_output=16 << 20)


def outcome(fn, *args, **kw):
    """Call ``fn``; return its result or the PykexecError it raised. Anything else propagates."""
    try:
        return fn(*args, **kw)
    except PykexecError as e:
        return e


def unwrap_or_error(data, limits: Limits = FUZZ_LIMITS):
    """``formats.unwrap(data)``, or the FormatError it raised; any other exception is a bug."""
    try:
        layers = formats.unwrap(data, limits)
    except FormatError as e:
        assert str(e), "a FormatError must say what is wrong"
        return e
    for layer in layers:
        layer.to_json()
    return layers


def parse_or_error(parse, data):
    """One format's own ``parse``: a result or a FormatError, nothing else."""
    try:
        return parse(data)
    except FormatError as e:
        return e


def truncations(data: bytes, header_end: int, samples: int = 24, stride: int = 1):
    """Every length up to ``header_end`` (every ``stride``-th: pefile takes ~10 ms to reject
    a truncated header), then ``samples`` points spread over the rest."""
    lengths = list(range(0, min(header_end, len(data)) + 1, stride))
    rest = len(data) - header_end
    if rest > 0:
        lengths += sorted({header_end + rest * i // samples for i in range(1, samples)})
    return lengths

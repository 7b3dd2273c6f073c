"""pykexec: understand, plan and load kexec boot images.

The public API is :mod:`pykexec.api`; ``inspect``, ``extract`` and
``prepare_file`` (from :mod:`pykexec.images`) are re-exported here, imported
on first use so that ``import pykexec`` stays cheap.
"""

from .errors import PykexecError

__version__ = "0.1.0"
__all__ = ["PykexecError", "extract", "inspect", "prepare_file", "__version__"]


def __getattr__(name: str):
    if name in ("extract", "inspect", "prepare_file"):
        from . import images
        return getattr(images, name)
    raise AttributeError(f"module 'pykexec' has no attribute {name!r}")

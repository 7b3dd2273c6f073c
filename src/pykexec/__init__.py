"""pykexec: understand, plan and load kexec boot images.

The public API is in :mod:`pykexec.api` and re-exported here.
"""

from .api import extract, inspect, prepare_file
from .errors import PykexecError

__version__ = "0.1.0"
__all__ = ["PykexecError", "extract", "inspect", "prepare_file", "__version__"]

"""Every method, registered once (see :mod:`.registry`).

Each module below registers one method (``ablations`` registers the workshop
paper's rows); the order of the imports is the order of the comparison's rows.
Adding a method: a new file here that calls ``register(Method(...))``, and its
import below. Nothing here imports torch until a hook runs.
"""

from . import dense, thin_dense, static, gmp, hashednet, dsd, dsr, set, deepr, rigl, snfs  # noqa: F401  (registration)
from . import ablations  # noqa: F401, E402  (rows that train dsr / static: after them)
from .registry import KINDS, REGISTRY, TIMING, Method, get, names, register, trainable, with_options

__all__ = ["KINDS", "REGISTRY", "TIMING", "Method", "get", "names", "register", "trainable", "with_options"]

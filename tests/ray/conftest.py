"""tests/ray run where Ray Serve is installed (`nox -s ray`); elsewhere they are not collected.

`ray.serve`, not `ray`: on a path where this folder is importable, `ray` alone could be found as
the namespace package of this very folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

HAS_RAY = importlib.util.find_spec("ray.serve") is not None
collect_ignore_glob = [] if HAS_RAY else ["*.py"]

if HAS_RAY:
    # Ray's own modules warn as they import (pydantic v1-style `Field(update_type=...)`), which
    # filterwarnings = error would turn into a collection error: import them once, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in ("ray.serve", "ray.serve.schema"):
            importlib.import_module(module)

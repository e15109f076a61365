"""onnxcompress.passes: graph-rewrite passes, one module each, registered by name.

Importing this package imports every module in it, so a new pass is one new module that calls
`@register(...)`: nothing else changes.
"""

import importlib
import pkgutil

from onnxcompress.passes.registry import REGISTRY, PassContext, get_pass, register  # noqa: F401

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

from onnxcompress.passes.manager import apply_plan  # noqa: E402,F401
from onnxcompress.passes.plan import PassCall, Plan  # noqa: E402,F401

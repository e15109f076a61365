"""Search agents, one module each, registered by name (`AGENTS`, filled at import, read-only).

Importing this package imports every module in it, so a new agent is one new module that
decorates its class with `@register_agent(...)`: nothing else changes. See base.py for the
ask/tell interface.
"""

import importlib
import pkgutil

from onnxcompress.search.agents.base import AGENTS, Agent, AgentContext, AgentSpec, get_agent, register_agent  # noqa: F401

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

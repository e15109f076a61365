"""Checkpoints of a search in progress: plain JSON for the search state (candidates, evaluated
results, counters, the latency model) and `torch.save` of the agent's state dict (tensors,
numbers, strings), loaded back with `weights_only=True`. Nothing arbitrary is ever unpickled.

Files in the checkpoint folder: `state.json` names the agent file it goes with
(`agent-<round>.pt`); both are written to temporary names and renamed, agent file first, so an
interruption at any moment leaves the previous consistent pair.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from onnxcompress.compiler.errors import UsageError

VERSION = 1
STATE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    state: dict[str, Any]
    agent: dict[str, Any] | None


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(folder: str | Path, state: dict[str, Any], agent_state: dict[str, Any] | None, tag: int) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    agent_file = None
    if agent_state is not None:
        agent_file = f"agent-{tag}.pt"
        _atomic_write(folder / agent_file, lambda fh: torch.save(agent_state, fh))
    body = {**state, "version": VERSION, "agent_file": agent_file}
    _atomic_write(folder / STATE, lambda fh: fh.write(json.dumps(body, sort_keys=True).encode()))
    for old in folder.glob("agent-*.pt"):
        if old.name != agent_file:
            old.unlink(missing_ok=True)


def load(folder: str | Path) -> Checkpoint | None:
    """The checkpoint in `folder`, or None when there is none yet."""
    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"checkpoint '{path}' is not valid JSON; delete the folder to start over") from None
    if state.get("version") != VERSION:
        raise UsageError(f"checkpoint '{path}' has version {state.get('version')}, expected {VERSION}; delete the folder to start over")
    agent = None
    if state.get("agent_file"):
        agent_path = folder / state["agent_file"]
        if not agent_path.is_file():
            raise UsageError(f"checkpoint '{path}' refers to missing '{agent_path.name}'; delete the folder to start over")
        agent = torch.load(str(agent_path), map_location="cpu", weights_only=True)
    return Checkpoint(state, agent)

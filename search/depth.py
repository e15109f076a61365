"""Depth families: which residual blocks to remove before channels shrink (N2N's stage 1), chosen
by measurement.

Why depth: on onnxruntime's CPU kernels a removed residual block is time saved in full, while a
thinner layer often is not (widths off the 8/16-channel blocks of its NCHWc convolutions run
slower, and 16-channel layers cannot shrink on that grid at all). Measured on the CIFAR ResNet-56
(AMD EPYC, 1 thread, batch 32): 12 of its 27 blocks removed -> 0.55x MACs and 1.79x faster; every
block's inner channels halved -> 0.50x MACs and 1.54x faster; every channel group at 70 % (free
widths) -> 0.49x MACs and only 1.11x faster.

Which blocks: each residual block is removed alone and the student's outputs are compared with the
teacher's on the validation images (`rank_blocks`): the damage is the mean KL divergence of the
student's softmax from the teacher's, a continuous measure that separates blocks whose removal
changes no top-1 decision. A family takes the least damaging blocks until the blocks' MACs reach
a share of the reduction the target asks for (`depth_family`); the channel search then does the
rest, and a short fine-tune (search/structure.py) judges the families.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import import_graph
from onnxcompress.compiler.runtime import make_session, run_batched
from onnxcompress.passes import Plan, apply_plan


@dataclass(frozen=True)
class BlockDamage:
    """What removing one residual block alone costs (without fine-tuning)."""

    block: str
    macs: int
    kl: float  # mean KL(teacher || student) on the validation images
    agreement: float  # top-1 agreement with the teacher


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.reshape(len(z), -1).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def rank_blocks(model: onnx.ModelProto, x: np.ndarray, limit: int = 512) -> list[BlockDamage]:
    """Every residual block of `model` (a canonical float model), least damaging first, measured on
    the first `limit` inputs of `x`. Blocks whose removal fails (it cannot be applied or run)
    are left out."""
    x = x[:limit]
    blocks = [u for u in analyze(import_graph(model)).removable if u.kind == "residual_block"]
    if not blocks:
        return []
    ref = _log_softmax(run_batched(make_session(model), x))
    p_ref = np.exp(ref)
    out = []
    for u in blocks:
        try:
            student = apply_plan(model, Plan.from_json({"passes": [{"pass": "remove", "block": u.id}]}))
            logp = _log_softmax(run_batched(make_session(student), x))
        except Exception:  # a unit the rewrite cannot drop here: not a candidate
            continue
        kl = float((p_ref * (ref - logp)).sum(axis=1).mean())
        agree = float((logp.argmax(1) == ref.argmax(1)).mean())
        out.append(BlockDamage(u.id, u.macs, kl, agree))
    out.sort(key=lambda d: (d.kl, d.block))
    return out


def depth_family(ranked: list[BlockDamage], total_macs: int, target_macs: float, share: float) -> tuple[str, ...]:
    """The least damaging blocks (a prefix of the ranking) whose MACs add up to at most `share` of
    the reduction that the target (a MACs fraction of `total_macs`) asks for; the block that
    would overshoot it by more than half its own MACs ends the family."""
    need = max(0.0, (1.0 - target_macs) * total_macs) * share
    chosen, saved = [], 0
    for d in ranked:
        if saved + d.macs > need + 0.5 * d.macs:
            break
        chosen.append(d.block)
        saved += d.macs
    return tuple(sorted(chosen, key=lambda b: int(b[1:]) if b[1:].isdigit() else 0))


def depth_families(model: onnx.ModelProto, x: np.ndarray, target_macs: float | None, limit: int) -> tuple[list[tuple[str, ...]], list[BlockDamage]]:
    """The families to search for a MACs target: channels only, then depth families that remove
    blocks for all, then half, of the reduction (`limit` families in all; duplicates and empty
    ones dropped). Returns (families, the ranking they came from)."""
    families: list[tuple[str, ...]] = [()]
    if limit <= 1 or target_macs is None or target_macs >= 1.0:
        return families, []
    ranked = rank_blocks(model, x)
    total = model_cost(model).macs
    for share in (1.0, 0.5, 0.25)[: limit - 1]:
        fam = depth_family(ranked, total, target_macs, share)
        if fam and fam not in families:
            families.append(fam)
    return families, ranked


__all__ = ["BlockDamage", "depth_families", "depth_family", "rank_blocks"]

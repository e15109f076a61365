"""The one table of per-op knowledge: how channels flow through each op type under pruning, and
every other per-op fact the compiler uses.

- `table.py`: OP_TABLE (op type -> OpInfo: its channel rule, quantizable, layer) and the helpers
  rules share;
- the channel rules, registered into OP_TABLE when this package is imported: `layer_rules.py`
  (Conv dense/depthwise/grouped, Gemm, MatMul), `channel_rules.py` (ops that keep channels in
  place, and those that couple or move them: elementwise, Concat, Pad, Slice, Split, norms),
  `shape_rules.py` (the shape domain of Shape/Gather/..., Reshape, Flatten, Squeeze, Transpose,
  reductions), `regroup_rules.py` (channel shuffle and GroupNorm: reshapes that regroup channels);
- `facts.py`: OP_FACTS, the per-op flags other modules ask about (which ops a refit looks
  through, which are int8 glue, KD feature maps, ...) and the sets derived from them;
- `layout.py`: ChannelLayout, Segment, DimRef.

Each rule receives a node, the channel layouts of its inputs (None where a tensor carries no
tracked channels: the network input, shape tensors, constants) and a `Tracer`
(compiler/channels.py) through which it records what pruning a channel would have to cut; it
returns the layouts of the node's outputs. An op type missing from the table is never guessed:
its tracked inputs are frozen with the reason "unknown op", and its outputs carry no tracked
channels. Adding an op is one rule (or one fact) plus a test.

Terminology (after Torch-Pruning): a *space* is the output channel set of one layer (Conv, Gemm,
MatMul); spaces that must shrink together (residual adds, depthwise convs) are merged into one
*channel group*. A layout says which spaces, in which order, make up a tensor's channel axis.
"""

from __future__ import annotations

from onnxcompress.compiler.ops import channel_rules, layer_rules, shape_rules  # noqa: F401  (register the rules)
from onnxcompress.compiler.ops.channel_rules import CHAIN_OPS, UNARY_ELEMENTWISE
from onnxcompress.compiler.ops.facts import (
    ARITHMETIC_OPS,
    AXES_INPUT_SINCE,
    BIAS_INPUT_OPS,
    CLASS_TAIL_OPS,
    FULLY_CONNECTED_OPS,
    INFERENCE_NOOP_OPS,
    INT8_DATA_MOVEMENT_OPS,
    INT8_GLUE_OPS,
    KD_FEATURE_OPS,
    LOGITS_VIEW_OPS,
    OP_FACTS,
    RANDOM_OPS,
    REFIT_PASS_THROUGH_OPS,
    SHAPE_INPUT_OPS,
    TRAINING_OUTPUTS,
    VIEW_OPS,
    WEIGHT_PRECISIONS,
    WEIGHT_SLOTS,
    OpFacts,
    facts,
)
from onnxcompress.compiler.ops.layout import ChannelLayout, DimRef, Rule, Segment
from onnxcompress.compiler.ops.shape_rules import REDUCE_OPS, shape_value_rule
from onnxcompress.compiler.ops.table import OP_TABLE, OpInfo, const, is_depthwise, norm_axis, rank_of, rule_for, shape_of

QUANTIZABLE_OPS = frozenset(op for op, info in OP_TABLE.items() if info.quantizable)
LAYER_OPS = frozenset(op for op, info in OP_TABLE.items() if info.layer)

__all__ = [
    "ARITHMETIC_OPS", "AXES_INPUT_SINCE", "BIAS_INPUT_OPS", "CHAIN_OPS", "CLASS_TAIL_OPS", "FULLY_CONNECTED_OPS",
    "INFERENCE_NOOP_OPS", "INT8_DATA_MOVEMENT_OPS", "INT8_GLUE_OPS", "KD_FEATURE_OPS", "LAYER_OPS", "LOGITS_VIEW_OPS",
    "OP_FACTS", "OP_TABLE", "QUANTIZABLE_OPS", "RANDOM_OPS", "REDUCE_OPS", "REFIT_PASS_THROUGH_OPS", "SHAPE_INPUT_OPS",
    "TRAINING_OUTPUTS", "UNARY_ELEMENTWISE", "VIEW_OPS", "WEIGHT_PRECISIONS", "WEIGHT_SLOTS", "ChannelLayout", "DimRef",
    "OpFacts", "OpInfo", "Rule", "Segment", "const", "facts", "is_depthwise", "norm_axis", "rank_of", "rule_for",
    "shape_of", "shape_value_rule",
]

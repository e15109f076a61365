"""Per-op facts beyond the channel rules."""

from __future__ import annotations

from dataclasses import dataclass

# ==============================================================================================
# per-op facts beyond the channel rules
# ==============================================================================================
# What the rest of the compiler knows about an op type, one row per op, so that no module keeps
# its own list of op names. Each flag is one question a module asks; the derived frozensets below
# are what they read. Where two modules ask similar questions with different answers (the ops a
# refit looks through vs the ops allowed after a classifier), the facts stay distinct: merging
# them would change behaviour. Ops absent from OP_FACTS have every flag False. These facts are
# independent of OP_TABLE's channel rules: an op may have facts without a rule (Shape, Dropout,
# the random generators) and a rule without facts.

@dataclass(frozen=True)
class OpFacts:
    fully_connected: bool = False  # a layer that is a matrix product (Gemm, MatMul): the search's "fc" feature
    bias_input: bool = False  # input 2 is an optional bias added per output channel (Conv, Gemm)
    weight_slots: frozenset[int] = frozenset()  # inputs that hold learned weights (the bridge's parameters)
    arithmetic: bool = False  # binary elementwise arithmetic (a weight read here is a learned offset / scale)
    view: bool = False  # only moves or reinterprets values: the bridge traces constants through it
    logits_view: bool = False  # reshapes scores without changing them: found between the logits and the output
    inference_noop: bool = False  # the identity at inference (removed by canonicalisation)
    random: bool = False  # draws random values: never constant-folded
    int8_glue: bool = False  # computes new values with an int8 kernel in onnxruntime (own output scale)
    int8_data_movement: bool = False  # moves/selects values: its output reuses its input's quantization
    shape_inputs: bool = False  # its inputs after the first are shapes/axes, not activations
    refit_pass_through: bool = False  # a least-squares refit looks through it to the layers behind
    class_tail: bool = False  # may sit between the classifier layer and the output (keeps the class axis)
    kd_feature: bool = False  # its output is a feature map worth distilling (attention/hint KD)
    training_output: str | None = None  # an extra output only training computes (the bridge cannot)
    axes_input_since: int | None = None  # the opset from which `axes` is an input instead of an attribute


def _facts(*flags: str, **values) -> OpFacts:
    return OpFacts(**{f: True for f in flags}, **values)


OP_FACTS: dict[str, OpFacts] = {
    "Conv": _facts("bias_input", "kd_feature", weight_slots=frozenset({1, 2})),
    "Gemm": _facts("fully_connected", "bias_input", weight_slots=frozenset({0, 1, 2})),
    "MatMul": _facts("fully_connected", weight_slots=frozenset({0, 1})),
    "BatchNormalization": _facts("kd_feature", weight_slots=frozenset({1, 2}), training_output="training statistics"),
    "PRelu": _facts("kd_feature", weight_slots=frozenset({1})),
    "Relu": _facts("refit_pass_through", "class_tail", "kd_feature"),
    "Clip": _facts("refit_pass_through", "class_tail", "kd_feature"),
    "Sigmoid": _facts("refit_pass_through", "class_tail", "kd_feature"),
    "LeakyRelu": _facts("refit_pass_through", "kd_feature"),
    "HardSigmoid": _facts("refit_pass_through", "kd_feature"),
    "HardSwish": _facts("refit_pass_through", "kd_feature"),
    "Elu": _facts("kd_feature"),
    "Tanh": _facts("kd_feature"),
    "Softmax": _facts("class_tail"),
    "LogSoftmax": _facts("class_tail"),
    "Add": _facts("arithmetic", "int8_glue", "kd_feature"),
    "Sum": _facts("arithmetic", "kd_feature"),
    "Mul": _facts("arithmetic", "kd_feature"),
    "Sub": _facts("arithmetic"),
    "Div": _facts("arithmetic"),
    "Concat": _facts("int8_glue", "kd_feature"),
    "MaxPool": _facts("int8_data_movement", "refit_pass_through", "class_tail", "kd_feature", training_output="Indices"),
    "AveragePool": _facts("int8_glue", "refit_pass_through", "class_tail", "kd_feature"),
    "GlobalAveragePool": _facts("int8_glue", "refit_pass_through", "class_tail"),
    "GlobalMaxPool": _facts("refit_pass_through", "class_tail"),
    "Flatten": _facts("view", "logits_view", "int8_data_movement", "refit_pass_through", "class_tail"),
    "Reshape": _facts("view", "logits_view", "int8_data_movement", "shape_inputs", "refit_pass_through", "class_tail"),
    "Squeeze": _facts("view", "logits_view", "int8_data_movement", "shape_inputs", "class_tail"),
    "Unsqueeze": _facts("view", "int8_data_movement", "shape_inputs", "class_tail"),
    "Transpose": _facts("view", "int8_data_movement", "class_tail"),
    "Identity": _facts("view", "logits_view", "inference_noop", "refit_pass_through", "class_tail"),
    "Cast": _facts("view", "class_tail"),
    "Shape": _facts("class_tail"),
    "Dropout": _facts("inference_noop"),
    "ReduceMean": _facts(axes_input_since=18),
    "ReduceSum": _facts(axes_input_since=13),
    "ReduceMax": _facts(axes_input_since=18),
    "ReduceMin": _facts(axes_input_since=18),
    **{op: _facts("random") for op in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")},
}


def facts(op: str) -> OpFacts:
    """The facts of an op type (all False for an op the table does not list)."""
    return OP_FACTS.get(op, _NO_FACTS)


_NO_FACTS = OpFacts()


def _ops_with(flag: str) -> frozenset[str]:
    return frozenset(op for op, f in OP_FACTS.items() if getattr(f, flag))


FULLY_CONNECTED_OPS = _ops_with("fully_connected")
BIAS_INPUT_OPS = _ops_with("bias_input")
ARITHMETIC_OPS = _ops_with("arithmetic")
VIEW_OPS = _ops_with("view")
LOGITS_VIEW_OPS = _ops_with("logits_view")
INFERENCE_NOOP_OPS = _ops_with("inference_noop")
RANDOM_OPS = _ops_with("random")
INT8_GLUE_OPS = _ops_with("int8_glue")
INT8_DATA_MOVEMENT_OPS = _ops_with("int8_data_movement")
SHAPE_INPUT_OPS = _ops_with("shape_inputs")
REFIT_PASS_THROUGH_OPS = _ops_with("refit_pass_through")
CLASS_TAIL_OPS = _ops_with("class_tail")
KD_FEATURE_OPS = _ops_with("kd_feature")
WEIGHT_SLOTS: dict[str, frozenset[int]] = {op: f.weight_slots for op, f in OP_FACTS.items() if f.weight_slots}
TRAINING_OUTPUTS: dict[str, str] = {op: f.training_output for op, f in OP_FACTS.items() if f.training_output}
AXES_INPUT_SINCE: dict[str, int] = {op: f.axes_input_since for op, f in OP_FACTS.items() if f.axes_input_since}

# the precisions (bits) the quantize pass can store a quantizable op's weight in (32: float, 16: fp16,
# 8: int8 QDQ, 4: int4 weight-only; passes/quantize/forms.py), widest first; the cost model, the
# pass and the search all read this one list
WEIGHT_PRECISIONS = (32, 16, 8, 4)

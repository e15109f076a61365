"""compiler/runtime.py: intermediate tensors from the part of the network they depend on."""

from __future__ import annotations

import numpy as np

from onnxcompress.compiler.runtime import intermediate_outputs, make_session, prefix_model, with_outputs
from tests.builders import resnet_like


def test_prefix_model_keeps_only_what_the_tensors_need_and_reproduces_them():
    model = resnet_like(blocks=3)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    early, later = convs[1].output[0], convs[3].output[0]
    cut = prefix_model(model, [early])
    assert [o.name for o in cut.graph.output] == [early]
    assert len(cut.graph.node) < len(model.graph.node) and len(cut.graph.initializer) < len(model.graph.initializer)
    assert all(n.output[0] != later for n in cut.graph.node)
    x = np.random.default_rng(0).standard_normal((300, 3, 8, 8)).astype(np.float32)
    full = make_session(with_outputs(model, [early, later]), optimize=False)
    want = dict(zip([early, later], full.run([early, later], {full.get_inputs()[0].name: x})))
    got = intermediate_outputs(model, x, [early, later], batch_size=128)  # three batches
    for name in (early, later):
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4 * np.abs(want[name]).max())


def test_given_tensors_are_fed_instead_of_computed():
    model = resnet_like(blocks=3)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    mid, later = convs[1].input[0], convs[3].output[0]
    x = np.random.default_rng(1).standard_normal((40, 3, 8, 8)).astype(np.float32)
    full = intermediate_outputs(model, x, [mid, later])
    cut = prefix_model(model, [later], given=[mid])
    assert mid in [i.name for i in cut.graph.input]
    got = intermediate_outputs(model, None if "x" not in [i.name for i in cut.graph.input] else x, [later], given={mid: full[mid]})
    np.testing.assert_allclose(got[later], full[later], rtol=1e-5, atol=1e-5)
    # a wrong given value changes the result: it is really used
    wrong = intermediate_outputs(model, x, [later], given={mid: full[mid] * 0})
    assert not np.allclose(wrong[later], full[later])

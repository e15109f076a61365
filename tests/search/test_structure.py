"""Structure families (search/structure.py): which removals are proposed, how probes rank."""

from __future__ import annotations

from onnxcompress.compiler.onnx_io import canonicalize
from onnxcompress.search.structure import Probe, choose, families
from tests.builders import resnet_like


def test_families_are_the_empty_set_and_the_largest_blocks():
    model = canonicalize(resnet_like(width=16, blocks=3))
    assert families(model, 1) == [()]
    fams = families(model, 3)
    assert fams[0] == () and len(fams) == 3 and all(len(f) == 1 for f in fams[1:])
    assert len(set(fams)) == 3


def test_choose_prefers_probe_accuracy_then_fewer_macs():
    a = Probe((), {"passes": []}, 0.6, 0.70, 100)
    b = Probe(("b2",), {"passes": [{"pass": "remove", "block": "b2"}]}, 0.3, 0.74, 120)
    c = Probe(("b5",), {"passes": [{"pass": "remove", "block": "b5"}]}, 0.5, 0.74, 90)
    assert choose([a, b]) is b
    assert choose([a, b, c]) is c  # same probe accuracy as b, fewer MACs



def test_choose_prefers_the_faster_of_statistically_tied_probes():
    from onnxcompress.search.structure import Probe, choose

    a = Probe((), {"passes": ["a"]}, 0.5, 0.900, 100)
    b = Probe(("b1",), {"passes": ["b"]}, 0.2, 0.895, 100)  # 0.5 points lower: within one standard error of 1000 images
    c = Probe(("b1", "b2"), {"passes": ["c"]}, 0.1, 0.850, 90)  # clearly worse
    assert choose([a, b, c], 1000) is a  # without timings: the best probe
    assert choose([a, b, c], 1000, {0: 1.2, 1: 1.9, 2: 2.5}) is b  # tied with the best and faster; c is not tied
    assert choose([a, b, c], 100_000, {0: 1.2, 1: 1.9, 2: 2.5}) is a  # on 100k images 0.5 points is no longer noise

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


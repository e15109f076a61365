"""KD losses: each term against its formula, feature matching at stage boundaries, class subsets,
and how KDLoss composes the terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnxcompress.compiler.bridge import OnnxModule
from onnxcompress.compiler.kd import (
    FeaturePair,
    KDConfig,
    KDLoss,
    attention_loss,
    attention_map,
    hint_loss,
    hinton_loss,
    match_features,
    stage_boundaries,
    teacher_targets,
)
from onnxcompress.errors import DataError, ModelError, UsageError
from tests.compiler.test_bridge import tiny_cnn

GEN = torch.Generator().manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def sample(n: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32))


def test_hinton_loss_matches_formula_and_t_squared_scaling() -> None:
    s, t = randn(5, 4), randn(5, 4)
    for temp in (1.0, 4.0):
        p_t = torch.softmax(t / temp, 1)
        manual = (p_t * (torch.log(p_t) - torch.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
        torch.testing.assert_close(hinton_loss(s, t, temp), manual)
    assert float(hinton_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_attention_map_is_normalised_and_scale_invariant() -> None:
    f = randn(3, 6, 5, 4)
    a = attention_map(f)
    assert a.shape == (3, 20)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert float(attention_loss(f, 3.0 * f)) == pytest.approx(0.0, abs=1e-7)
    # channel count does not matter, only where the activation is
    assert float(attention_loss(f[:, :2], f[:, :2].repeat(1, 4, 1, 1))) == pytest.approx(0.0, abs=1e-7)
    assert float(attention_loss(f, randn(3, 6, 5, 4))) > 0
    with pytest.raises(ModelError, match="spatial"):
        attention_loss(f, randn(3, 6, 4, 4))


def test_hint_loss_with_and_without_adapter() -> None:
    fs, ft = randn(2, 3, 4, 4), randn(2, 5, 4, 4)
    adapter = torch.nn.Conv2d(3, 5, 1, bias=False)
    torch.testing.assert_close(hint_loss(fs, ft, adapter), F.mse_loss(adapter(fs), ft))
    torch.testing.assert_close(hint_loss(fs, fs * 2), F.mse_loss(fs, fs * 2))


def test_teacher_targets_select_class_subset_in_order() -> None:
    t = torch.arange(12.0).reshape(2, 6)
    assert teacher_targets(t, (3, 1)).tolist() == [[3.0, 1.0], [9.0, 7.0]]
    assert teacher_targets(t, None) is t


@pytest.mark.parametrize(
    "kwargs",
    [{"kinds": ("hinton", "magic")}, {"kinds": ("hinton", "hinton")}, {"temperature": 0.0}, {"alpha": 1.5},
     {"beta": -1.0}],
)
def test_kd_config_validation(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        KDConfig(**kwargs)


def test_stage_boundaries_are_last_tensor_per_resolution() -> None:
    module = OnnxModule(tiny_cnn())
    shapes = module.tensor_shapes(sample(1))
    assert stage_boundaries(module, shapes) == {(8, 8): "r1", (4, 4): "r2"}


def test_match_by_name_then_by_size() -> None:
    teacher = OnnxModule(tiny_cnn(width=8))
    student = OnnxModule(tiny_cnn(width=4, seed=3))
    pairs = match_features(student, teacher, sample())
    assert pairs == (FeaturePair("r1", "r1", 4, 8, (8, 8)), FeaturePair("r2", "r2", 4, 8, (4, 4)))
    # a student whose tensors were renamed still matches by spatial size
    renamed = tiny_cnn(width=4)
    for node in renamed.graph.node:
        node.input[:] = [f"s_{n}" if n in ("r1", "r2") else n for n in node.input]
        node.output[:] = [f"s_{n}" if n in ("r1", "r2") else n for n in node.output]
    pairs = match_features(OnnxModule(renamed), teacher, sample())
    assert [(p.student, p.teacher) for p in pairs] == [("s_r1", "r1"), ("s_r2", "r2")]


def test_softmax_teacher_and_logit_student_agree() -> None:
    """A teacher ending in Softmax gives its logits (the Softmax input), like a logit student."""
    teacher = OnnxModule(tiny_cnn(softmax=True)).eval()
    student = OnnxModule(tiny_cnn(softmax=False)).eval()
    with torch.no_grad():
        zt, zs = teacher.logits(sample()), student.logits(sample())
    torch.testing.assert_close(zt, zs)
    loss, terms = KDLoss(KDConfig())(zs, zt)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and set(terms) == {"hinton"}


def test_loss_composition_with_and_without_labels() -> None:
    s, t, y = randn(4, 3), randn(4, 3), torch.tensor([0, 2, 1, 0])
    cfg = KDConfig(kinds=("hinton",), temperature=2.0, alpha=0.7)
    total, terms = KDLoss(cfg)(s, t, y)
    expected = 0.7 * hinton_loss(s, t, 2.0) + 0.3 * F.cross_entropy(s, y)
    torch.testing.assert_close(total, expected)
    assert set(terms) == {"hinton", "ce"}
    total, terms = KDLoss(cfg)(s, t)  # no labels: KD alone, full weight
    torch.testing.assert_close(total, hinton_loss(s, t, 2.0))
    total, terms = KDLoss(KDConfig(kinds=()))(s, t, y)  # no KD term: plain cross-entropy
    torch.testing.assert_close(total, F.cross_entropy(s, y))
    with pytest.raises(DataError, match="nothing to learn"):
        KDLoss(KDConfig(kinds=()))(s, t)


def test_class_subset_student() -> None:
    teacher_logits = randn(4, 10)
    loss_fn = KDLoss(KDConfig(), teacher_classes=(3, 1))
    student_logits = teacher_logits[:, [3, 1]].clone().requires_grad_(True)
    total, _ = loss_fn(student_logits, teacher_logits)
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ModelError, match="teacher_classes"):
        KDLoss(KDConfig())(randn(4, 2), teacher_logits)


def test_feature_terms_and_adapters() -> None:
    teacher = OnnxModule(tiny_cnn(width=8)).eval()
    student = OnnxModule(tiny_cnn(width=4, seed=3))
    pairs = match_features(student, teacher, sample())
    cfg = KDConfig(kinds=("hinton", "attention", "hints"), beta=10.0, gamma=0.5)
    loss_fn = KDLoss(cfg, pairs, seed=7)
    assert sorted(loss_fn.adapters) == ["hint0", "hint1"]
    again = KDLoss(cfg, pairs, seed=7)
    torch.testing.assert_close(loss_fn.adapters["hint0"].weight, again.adapters["hint0"].weight)
    x = sample(3)
    with torch.no_grad():
        zt, ft = teacher.logits(x, taps=loss_fn.teacher_taps)
    zs, fs = student.logits(x, taps=loss_fn.student_taps)
    total, terms = loss_fn(zs, zt, None, fs, ft)
    assert set(terms) == {"hinton", "attention", "hints"}
    manual = terms["hinton"] + 10.0 * terms["attention"] + 0.5 * terms["hints"]
    assert float(total.detach()) == pytest.approx(manual, rel=1e-5)
    total.backward()
    assert loss_fn.adapters["hint0"].weight.grad is not None
    assert all(p.grad is not None for p in student.params.values())
    # equal widths need no adapter
    same = KDLoss(KDConfig(kinds=("hints",)), match_features(OnnxModule(tiny_cnn(width=8, seed=5)), teacher, x))
    assert len(same.adapters) == 0


def test_feature_kd_without_matching_maps_is_refused() -> None:
    with pytest.raises(ModelError, match="no student and teacher feature maps"):
        KDLoss(KDConfig(kinds=("attention",)), pairs=())

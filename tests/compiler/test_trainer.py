"""finetune(): learning on a tiny synthetic task, determinism, resume from a checkpoint, early
stopping, class-subset students and input validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import onnxcompress.compiler.trainer as trainer_module
from onnxcompress.compiler.bridge import OnnxModule
from onnxcompress.compiler.data import Dataset, InputSpec
from onnxcompress.compiler.kd import KDConfig
from onnxcompress.compiler.trainer import (
    CHECKPOINT_NAME,
    FinetuneConfig,
    accuracy,
    RMS_FLOOR,
    augment_batch,
    finetune,
    mix_batch,
    lr_at,
    param_groups,
)
from onnxcompress.errors import DataError, ModelError, UsageError
from tests.compiler.test_bridge import tiny_cnn


def textures(n: int, seed: int, classes: int = 4, size: int = 8) -> Dataset:
    """Noisy horizontal stripes / vertical stripes / checkerboard / flat: a local-texture task
    that a Conv-GAP network learns in a few epochs."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:size, :size]
    patterns = np.stack([r % 2, c % 2, (r + c) % 2, np.zeros_like(r)])[:classes].astype(np.float32)
    y = rng.integers(0, classes, n)
    x = patterns[y][:, None] + rng.normal(0, 0.5, (n, 1, size, size)).astype(np.float32)
    return Dataset(x.astype(np.float32), y.astype(np.int64))


TRAIN, VAL = textures(384, 0), textures(192, 1)
FAST = FinetuneConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.05, augment=False, threads=1)


def weights(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.fixture(scope="module")
def teacher() -> onnx.ModelProto:
    """A tiny CNN trained on the labels (no KD term: plain cross-entropy)."""
    model, result = finetune(tiny_cnn(seed=1), tiny_cnn(seed=1), TRAIN, VAL,
                             dataclasses.replace(FAST, kd=KDConfig(kinds=())), progress=False)
    assert result.best_val_accuracy is not None and result.best_val_accuracy > 0.9
    return model


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"batch_size": 1}, {"optimizer": "rmsprop"}, {"lr": 0.0}, {"warmup_epochs": 5, "epochs": 2},
     {"patience": 0}, {"crop_padding": -1}, {"threads": 0}, {"teacher_classes": ()}, {"teacher_classes": (1, 1)},
     {"lr_scaling": "layer"}, {"mix": "mosaic"}, {"mix_alpha": 0.0}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        FinetuneConfig(**kwargs)


def test_lr_schedule_warmup_then_cosine() -> None:
    lrs = [lr_at(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.05, rel=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3


def test_default_lr_and_scaling_follow_the_optimizer() -> None:
    adamw = FinetuneConfig()
    assert (adamw.scaling, adamw.base_lr, adamw.batch_size) == ("rms", 2e-2, 16)
    assert (FinetuneConfig(lr_scaling="none").scaling, FinetuneConfig(lr_scaling="none").base_lr) == ("none", 1e-4)
    sgd = FinetuneConfig(optimizer="sgd")
    assert (sgd.scaling, sgd.base_lr) == ("none", 1e-2)
    assert FinetuneConfig(optimizer="sgd", lr_scaling="rms").scaling == "rms"
    assert FinetuneConfig(lr=0.3).base_lr == 0.3
    assert (KDConfig().temperature, KDConfig().alpha, KDConfig().beta) == (2.0, 0.5, 100.0)
    assert (adamw.mix, adamw.mix_alpha) == ("none", 1.0)


def test_param_groups_plain_and_rms_scaled() -> None:
    w_small = torch.nn.Parameter(torch.full((4, 3), 0.002))
    w_big = torch.nn.Parameter(torch.full((2, 2, 1, 1), 5.0))
    bias = torch.nn.Parameter(torch.zeros(4))
    plain = param_groups([w_small, w_big, bias], 0.01)
    assert [len(g["params"]) for g in plain] == [2, 1]
    assert [(g["weight_decay"], g["lr_scale"]) for g in plain] == [(0.01, 1.0), (0.0, 1.0)]
    scaled = param_groups([w_small, w_big, bias], 0.01, "rms")
    assert [len(g["params"]) for g in scaled] == [1, 1, 1]
    assert [g["lr_scale"] for g in scaled] == pytest.approx([0.002, 5.0, RMS_FLOOR])
    # decoupled decay per step (lr * lr_scale * weight_decay) is the same fraction for every weight
    assert [g["lr_scale"] * g["weight_decay"] for g in scaled] == pytest.approx([0.01, 0.01, 0.0])


def test_rms_lr_scaling_makes_the_step_relative() -> None:
    # One Adam step moves every element by about lr whatever its size; with lr_scaling="rms" the
    # step of each weight tensor is lr times that tensor's RMS. A first conv 1000x smaller than
    # the rest (a model fed raw 0..255 pixels) moves by the same fraction as the others.
    student = tiny_cnn(width=4, seed=2)
    for t in student.graph.initializer:
        if t.name == student.graph.node[0].input[1]:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) / 1000, t.name))
    one_batch = TRAIN.head(32)
    lr = 0.01
    base = dataclasses.replace(FAST, epochs=1, optimizer="adamw", lr=lr, weight_decay=0.0, reinsert_bn=False,
                               kd=KDConfig(kinds=()))
    before = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    for scaling in ("none", "rms"):
        trained, _ = finetune(student, student, one_batch, None, dataclasses.replace(base, lr_scaling=scaling),
                              progress=False)
        for t in trained.graph.initializer:
            w0, w1 = before[t.name], numpy_helper.to_array(t)
            if w0.ndim < 2:
                continue
            step = float(np.abs(w1 - w0).max())
            rms = float(np.sqrt((w0.astype(np.float64) ** 2).mean()))
            expected = lr * (max(rms, RMS_FLOOR) if scaling == "rms" else 1.0)
            assert step == pytest.approx(expected, rel=0.05), (scaling, t.name)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_augment_batch_crops_and_flips_in_layout(layout: str) -> None:
    spec = InputSpec("x", layout, channels=3, height=6, width=7)  # type: ignore[arg-type]
    x = np.random.default_rng(0).random((16,) + spec.sample_shape).astype(np.float32)
    w_axis = spec.spatial_axes[1]
    same = augment_batch(x, spec, np.random.default_rng(1), padding=0, flip=False)
    np.testing.assert_array_equal(same, x)
    flipped = augment_batch(x, spec, np.random.default_rng(1), padding=0, flip=True)
    mirrored = [np.array_equal(f, np.flip(o, axis=w_axis - 1)) for f, o in zip(flipped, x)]
    kept = [np.array_equal(f, o) for f, o in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    cropped = augment_batch(x, spec, np.random.default_rng(2), padding=2, flip=False)
    assert cropped.shape == x.shape and not np.array_equal(cropped, x)
    # every crop is a shifted window of the reflect-padded sample: all values come from the original
    assert all(np.isin(c, o).all() for c, o in zip(cropped, x))
    again = augment_batch(x, spec, np.random.default_rng(2), padding=2, flip=False)
    np.testing.assert_array_equal(cropped, again)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_mix_batch_mixup_and_cutmix(layout: str) -> None:
    spec = InputSpec("x", layout, channels=3, height=8, width=8)  # type: ignore[arg-type]
    x = np.random.default_rng(0).random((16,) + spec.sample_shape).astype(np.float32)
    mixed, perm, lam = mix_batch(x, spec, np.random.default_rng(1), "mixup", 1.0)
    assert 0 < lam < 1 and sorted(perm) == list(range(16))
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], rtol=1e-6)
    for seed in range(5):
        cut, perm, lam = mix_batch(x, spec, np.random.default_rng(seed), "cutmix", 1.0)
        c_axis = 1 if layout == "NCHW" else 3
        own, other = (cut == x).all(axis=c_axis), (cut == x[perm]).all(axis=c_axis)
        assert (own | other).all()  # every pixel comes from the sample or its partner
        i = int(np.flatnonzero(perm != np.arange(16))[0])
        assert lam == pytest.approx(own[i].mean())  # lam is the exact fraction kept
        again = mix_batch(x, spec, np.random.default_rng(seed), "cutmix", 1.0)
        np.testing.assert_array_equal(cut, again[0])


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixed_batches_still_learn(teacher: onnx.ModelProto, mix: str) -> None:
    config = dataclasses.replace(FAST, epochs=4, mix=mix)
    _, result = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, VAL, config, progress=False)
    assert result.initial_val_accuracy is not None and result.best_val_accuracy is not None
    assert result.best_val_accuracy > max(0.7, result.initial_val_accuracy + 0.2), result
    # the mixing draws change the run: it is not the unmixed one
    _, plain = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, VAL, dataclasses.replace(FAST, epochs=4), progress=False)
    assert [h.train_loss for h in result.history] != [h.train_loss for h in plain.history]


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------


def test_kd_without_labels_improves_accuracy(teacher: onnx.ModelProto) -> None:
    student = tiny_cnn(width=4, seed=2)
    unlabelled = Dataset(TRAIN.x)
    config = dataclasses.replace(FAST, epochs=4, kd=KDConfig(kinds=("hinton",), temperature=2.0))
    before = onnx.ModelProto()
    before.CopyFrom(student)
    trained, result = finetune(student, teacher, unlabelled, VAL, config, progress=False)
    assert student.SerializeToString() == before.SerializeToString()  # inputs are never modified
    assert result.initial_val_accuracy is not None and result.best_val_accuracy is not None
    assert result.best_val_accuracy >= result.initial_val_accuracy + 0.2
    assert result.epochs_run == 4 and len(result.history) == 4
    assert accuracy(OnnxModule(trained), VAL) == pytest.approx(result.best_val_accuracy)


def test_two_runs_are_identical(teacher: onnx.ModelProto) -> None:
    config = dataclasses.replace(FAST, epochs=2, augment=True, crop_padding=1,
                                 kd=KDConfig(kinds=("hinton", "attention", "hints")))
    a, ra = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, config, progress=False)
    b, rb = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, config, progress=False)
    assert weights(a) == weights(b)
    assert weights(a) != weights(tiny_cnn(width=4, seed=2))
    assert [h.train_loss for h in ra.history] == [h.train_loss for h in rb.history]
    assert ra.best_val_accuracy is None and ra.best_epoch == 2


@pytest.mark.parametrize("lr_scaling", ["none", "rms"])
def test_resume_after_interruption_gives_same_weights(teacher: onnx.ModelProto, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, lr_scaling: str) -> None:
    config = dataclasses.replace(FAST, epochs=3, augment=True, crop_padding=1, optimizer="adamw", lr=0.01,
                                 warmup_epochs=1, lr_scaling=lr_scaling)
    student = tiny_cnn(width=4, seed=2)
    full, full_result = finetune(student, teacher, TRAIN, VAL, config, progress=False)

    save = trainer_module._save_checkpoint

    def save_then_crash(path: Path, payload: dict) -> None:
        save(path, payload)
        if payload["epoch"] == 1:
            raise KeyboardInterrupt  # the job is killed right after epoch 1's checkpoint

    monkeypatch.setattr(trainer_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        finetune(student, teacher, TRAIN, VAL, config, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(trainer_module, "_save_checkpoint", save)
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert payload["epoch"] == 1

    resumed, result = finetune(student, teacher, TRAIN, VAL, config, checkpoint_dir=tmp_path, progress=False)
    assert weights(resumed) == weights(full)
    assert result.epochs_run == 3 and result.best_val_accuracy == full_result.best_val_accuracy
    strip = lambda r: [dataclasses.replace(h, seconds=0.0, train_seconds=0.0) for h in r.history]  # noqa: E731
    assert strip(result) == strip(full_result)


def test_checkpoint_for_other_settings_is_ignored(teacher: onnx.ModelProto, tmp_path: Path) -> None:
    student = tiny_cnn(width=4, seed=2)
    first = dataclasses.replace(FAST, epochs=1)
    finetune(student, teacher, TRAIN, None, first, checkpoint_dir=tmp_path, progress=False)
    other = dataclasses.replace(FAST, epochs=1, lr=0.02)
    with pytest.warns(UserWarning, match="starting over"):
        got, _ = finetune(student, teacher, TRAIN, None, other, checkpoint_dir=tmp_path, progress=False)
    fresh, _ = finetune(student, teacher, TRAIN, None, other, progress=False)
    assert weights(got) == weights(fresh)


def test_early_stopping_keeps_best_weights(teacher: onnx.ModelProto) -> None:
    student = tiny_cnn(width=4, seed=2)
    # A learning rate this small cannot change val accuracy (and without re-inserted BatchNorm no
    # running statistics move): no epoch beats the untouched student.
    config = dataclasses.replace(FAST, epochs=5, lr=1e-9, patience=2, reinsert_bn=False)
    trained, result = finetune(student, teacher, TRAIN, VAL, config, progress=False)
    assert result.epochs_run == 2 and result.best_epoch == 0
    for a, b in zip(student.graph.initializer, trained.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(b), numpy_helper.to_array(a), rtol=1e-5, atol=1e-6)


def test_class_subset_student(teacher: onnx.ModelProto) -> None:
    # Student with 2 outputs learns the teacher's classes 2 and 0 (labels already remapped).
    keep = np.isin(TRAIN.y, [2, 0])  # type: ignore[arg-type]
    remap = np.where(TRAIN.y[keep] == 2, 0, 1)  # type: ignore[index]
    train = Dataset(TRAIN.x[keep], remap.astype(np.int64))
    config = dataclasses.replace(FAST, teacher_classes=(2, 0))
    trained, result = finetune(tiny_cnn(classes=2, width=4, seed=2), teacher, Dataset(train.x), None, config,
                               progress=False)
    module = OnnxModule(trained)
    assert accuracy(module, train) > 0.9
    with pytest.raises(ModelError, match="teacher_classes"):
        finetune(tiny_cnn(classes=2, width=4, seed=2), teacher, train, None, FAST, progress=False)


def test_nhwc_model_with_augmentation() -> None:
    model = tiny_cnn(channels=3, nhwc=True, softmax=True)
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32)
    data = Dataset(x, np.random.default_rng(1).integers(0, 4, 64))
    config = FinetuneConfig(epochs=1, batch_size=16, augment=True, threads=1)
    trained, result = finetune(model, model, data, data, config, progress=False)
    assert result.epochs_run == 1 and len(trained.graph.node) == len(model.graph.node)


def test_input_validation(teacher: onnx.ModelProto) -> None:
    bad_labels = Dataset(TRAIN.x, np.full(len(TRAIN), 7, np.int64))
    with pytest.raises(DataError, match="label 7 is out of range"):
        finetune(tiny_cnn(), teacher, bad_labels, None, FAST, progress=False)
    with pytest.raises(DataError, match="model expects"):
        finetune(tiny_cnn(), teacher, Dataset(np.zeros((8, 1, 6, 6), np.float32)), None, FAST, progress=False)
    with pytest.raises(ModelError, match="differs from teacher"):
        finetune(tiny_cnn(size=6), teacher, TRAIN, None, FAST, progress=False)
    with pytest.raises(DataError, match="out of range"):
        finetune(tiny_cnn(classes=2), teacher, Dataset(TRAIN.x), None,
                 dataclasses.replace(FAST, teacher_classes=(0, 9)), progress=False)


def test_time_limit_cuts_the_epochs_that_would_overrun(monkeypatch):
    """With a time limit, the epochs still to come shrink to those that fit at the measured epoch
    time: on a clock where every epoch takes 10 s, a 25 s limit ends a 50-epoch plan after 2, and
    the cosine schedule ends with them (the last epoch's learning rate is near 0). Deterministic: the
    trainer's clock is replaced."""
    from dataclasses import replace as _replace

    from onnxcompress.compiler import trainer as tr
    from onnxcompress.compiler.trainer import FinetuneConfig, finetune
    from tests.builders import resnet_like

    clock = {"t": 0.0}
    monkeypatch.setattr(tr.time, "perf_counter", lambda: clock["t"])
    real_epoch = tr._train_epoch

    def ten_second_epoch(*args, **kwargs):
        out = real_epoch(*args, **kwargs)
        clock["t"] += 10.0
        return out

    monkeypatch.setattr(tr, "_train_epoch", ten_second_epoch)
    teacher = resnet_like(width=8, blocks=1)
    rng = np.random.default_rng(0)
    data = Dataset(rng.standard_normal((64, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 64))
    _, limited = finetune(teacher, teacher, data, None, _replace(FinetuneConfig(epochs=50), time_limit_s=25.0), progress=False)
    assert limited.epochs_run == 2
    assert limited.history[-1].lr < 0.05 * FinetuneConfig().base_lr
    _, unlimited = finetune(teacher, teacher, data, None, FinetuneConfig(epochs=3), progress=False)
    assert unlimited.epochs_run == 3
    # a plan that under-uses the limit grows while in its first half (5 % margin): 4 planned
    # epochs of 10 s with 100 s become 9, the schedule still ending near 0
    _, grown = finetune(teacher, teacher, data, None, _replace(FinetuneConfig(epochs=4), time_limit_s=100.0),
                        progress=False)
    assert grown.epochs_run == 9
    assert grown.history[-1].lr < 0.05 * FinetuneConfig().base_lr


# ---------------------------------------------------------------------------------------------
# The teacher's forward pass in onnxruntime
# ---------------------------------------------------------------------------------------------


def test_runtime_teacher_reproduces_the_bridge_and_is_used(teacher: onnx.ModelProto) -> None:
    from onnxcompress.compiler.kd import match_features
    from onnxcompress.compiler.teacher_runner import RuntimeTeacher, runtime_teacher

    bridge = OnnxModule(teacher).eval()
    student = OnnxModule(tiny_cnn(width=4, seed=2))
    taps = [p.teacher for p in match_features(student, bridge, TRAIN.x[:1])]
    assert taps
    fast = runtime_teacher(teacher, bridge, taps, TRAIN.x[:4], threads=1)
    assert isinstance(fast, RuntimeTeacher)
    x = torch.from_numpy(TRAIN.x[:16].copy())
    z, feats = fast.logits(x, taps)
    with torch.no_grad():
        z_ref, feats_ref = bridge.logits(x, taps)
    torch.testing.assert_close(z, z_ref, atol=1e-4, rtol=1e-4)
    for name in taps:
        torch.testing.assert_close(feats[name], feats_ref[name], atol=1e-4, rtol=1e-4)

    # the trainer uses it on the CPU (and only when allowed), and both paths learn the same
    config = dataclasses.replace(FAST, epochs=2, augment=True, crop_padding=1,
                                 kd=KDConfig(kinds=("hinton", "attention")))
    run = trainer_module._build(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, config)
    assert isinstance(run.teacher, RuntimeTeacher)
    slow_config = dataclasses.replace(config, runtime_teacher=False)
    assert isinstance(trainer_module._build(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, slow_config).teacher,
                      OnnxModule)
    _, r_fast = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, config, progress=False)
    _, r_slow = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, slow_config, progress=False)
    assert [h.train_loss for h in r_fast.history] == pytest.approx([h.train_loss for h in r_slow.history], rel=1e-3)


def test_runtime_teacher_falls_back_when_it_disagrees(teacher: onnx.ModelProto, monkeypatch) -> None:
    import onnxcompress.compiler.teacher_runner as runner

    bridge = OnnxModule(teacher).eval()
    real_run = runner.RuntimeTeacher.run

    def off_by_one(self, x):  # noqa: ANN001, ANN202 - a runtime that computes something else
        return {k: v + 1.0 for k, v in real_run(self, x).items()}

    monkeypatch.setattr(runner.RuntimeTeacher, "run", off_by_one)
    assert runner.runtime_teacher(teacher, bridge, [], TRAIN.x[:4], threads=1) is None
    run = trainer_module._build(tiny_cnn(width=4, seed=2), teacher, TRAIN, None, FAST)
    assert isinstance(run.teacher, OnnxModule)


def test_bf16_training_learns_like_fp32_and_writes_float32_weights(teacher: onnx.ModelProto) -> None:
    """bf16 autocast (channels-last on the CPU) trains the same student to about the same
    accuracy; the weights written back stay float32 and the written model computes what the
    trained module computes (the channels-last weights are written in ONNX's layout)."""
    from onnxcompress.compiler.runtime import make_session

    config = dataclasses.replace(FAST, epochs=4, kd=KDConfig(kinds=("hinton", "attention")))
    runs = {p: finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, VAL, dataclasses.replace(config, precision=p), progress=False)
            for p in ("fp32", "bf16")}
    (fp32, r32), (bf16, r16) = runs["fp32"], runs["bf16"]
    assert r16.precision == "bf16" and r32.precision == "fp32"
    assert weights(bf16) != weights(fp32) != weights(tiny_cnn(width=4, seed=2))  # really a different arithmetic
    assert r16.best_val_accuracy >= r16.initial_val_accuracy + 0.2
    assert abs(r16.best_val_accuracy - r32.best_val_accuracy) <= 0.1
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in bf16.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16))
    out = make_session(bf16).run(None, {bf16.graph.input[0].name: VAL.x[:16]})[0]
    with torch.no_grad():
        ref = OnnxModule(bf16).eval()(torch.from_numpy(np.array(VAL.x[:16]))).numpy()  # the graph output (softmax here)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert accuracy(OnnxModule(bf16), VAL) == pytest.approx(r16.best_val_accuracy)


def test_bf16_falls_back_to_float32_where_the_student_fails_in_bf16(teacher: onnx.ModelProto, monkeypatch) -> None:
    """A student whose bf16 pass raises or drifts trains in float32 (and says so) instead of failing."""
    from onnxcompress.compiler.trainer import bf16_agrees

    class Drifting(torch.nn.Module):  # right in float32, off under autocast
        def forward(self, x):
            return x.mean((1, 2, 3))[:, None] + (1.0 if torch.is_autocast_enabled("cpu") else 0.0)

    class Raising(torch.nn.Module):
        def forward(self, x):
            if torch.is_autocast_enabled("cpu"):
                raise RuntimeError("no bf16 kernel")
            return x

    cpu = torch.device("cpu")
    assert bf16_agrees(OnnxModule(tiny_cnn(width=4, seed=2)), VAL.x[:8], cpu)
    assert not bf16_agrees(Drifting(), VAL.x[:8], cpu) and not bf16_agrees(Raising(), VAL.x[:8], cpu)
    monkeypatch.setattr(trainer_module, "bf16_agrees", lambda *a, **k: False)
    config = dataclasses.replace(FAST, epochs=1, precision="bf16")
    with pytest.warns(UserWarning, match="training in float32"):
        trained, result = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, VAL, config, progress=False)
    fp32, _ = finetune(tiny_cnn(width=4, seed=2), teacher, TRAIN, VAL, dataclasses.replace(config, precision="fp32"), progress=False)
    assert result.precision == "fp32" and weights(trained) == weights(fp32)

"""Small pieces of compiler/pipeline.py (the end-to-end runs are in tests/cli)."""

from __future__ import annotations

from onnxcompress.compiler.pipeline import accuracy_drop


def test_accuracy_drop_equal_to_the_budget_meets_it():
    assert accuracy_drop(0.789, 0.774) <= 1.5  # 100 * (0.789 - 0.774) is 1.5000000000000013 in floats
    assert accuracy_drop(0.789, 0.7739) > 1.5
    assert accuracy_drop(0.5, 0.6) == -10.0


def test_agents_that_remove_units_also_get_structure_families(tmp_path):
    """N2N's REINFORCE decides removals itself, but judged without fine-tuning it learns to keep
    every unit; compress therefore runs it on the structure families too (a block removed first,
    each family probed by a short fine-tune), as it does the channel-only agents."""
    import numpy as np
    import onnx

    from onnxcompress.compiler.pipeline import compress
    from onnxcompress.compiler.runtime import make_session
    from tests.builders import resnet_like

    teacher = resnet_like(width=16, blocks=3)
    onnx.save(teacher, tmp_path / "t.onnx")
    x = np.random.default_rng(0).integers(0, 255, (300, 8, 8, 3), dtype=np.uint8)
    y = make_session(teacher).run(None, {"x": (x.astype(np.float32) / 255).transpose(0, 3, 1, 2)})[0].argmax(1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result = compress(tmp_path / "t.onnx", tmp_path / "train.npz", "macs=0.5", agent="reinforce", episodes=4, finetune_epochs=1, progress=False)
    (probes,) = result.report.probes
    assert [len(p.removed) for p in probes] == [0, 1, 1]
    assert result.students[0].metrics.macs <= 0.5 * result.teacher.macs

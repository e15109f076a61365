"""Small pieces of onnxcompress/pipeline.py (the end-to-end runs are in tests/cli)."""

from __future__ import annotations

import pytest

from onnxcompress.pipeline import accuracy_drop


def test_accuracy_drop_equal_to_the_budget_meets_it():
    assert accuracy_drop(0.789, 0.774) <= 1.5  # 100 * (0.789 - 0.774) is 1.5000000000000013 in floats
    assert accuracy_drop(0.789, 0.7739) > 1.5
    assert accuracy_drop(0.5, 0.6) == -10.0


def test_small_validation_sets_are_flagged():
    from onnxcompress.pipeline import small_validation_note

    assert small_validation_note(1000, 1.0) is None and small_validation_note(100, 1.0) is None
    note = small_validation_note(4, 1.0)
    assert note is not None and "25 accuracy points" in note and "\n" not in note
    assert small_validation_note(50, 1.0) is not None and small_validation_note(50, 2.0) is None


def test_a_student_slower_than_its_teacher_is_said_so():
    from onnxcompress.pipeline import _slower_note
    from onnxcompress.compiler.runtime import Latency

    teacher = Latency(0.1, 2.0)
    assert _slower_note(Latency(0.05, 1.0), teacher, 16) == "" and _slower_note(None, teacher, 16) == ""
    note = _slower_note(Latency(0.2, 2.5), teacher, 1)
    assert "SLOWER than the teacher" in note and "0.80x speed at batch 32" in note and "--channel-multiple" in note
    assert "--channel-multiple" not in _slower_note(Latency(0.2, 2.5), teacher, 16)


@pytest.mark.slow
def test_agents_that_remove_units_also_get_structure_families(tmp_path):
    """N2N's REINFORCE decides removals itself, but judged without fine-tuning it learns to keep
    every unit; compress therefore runs it on the structure families too (the least damaging
    blocks removed first, each family probed by a short fine-tune), as it does the channel-only agents."""
    import numpy as np
    import onnx

    from onnxcompress import compress
    from onnxcompress.compiler.runtime import make_session
    from tests.builders import resnet_like

    teacher = resnet_like(width=16, blocks=3)
    onnx.save(teacher, tmp_path / "t.onnx")
    x = np.random.default_rng(0).integers(0, 255, (300, 8, 8, 3), dtype=np.uint8)
    y = make_session(teacher).run(None, {"x": (x.astype(np.float32) / 255).transpose(0, 3, 1, 2)})[0].argmax(1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result = compress(tmp_path / "t.onnx", tmp_path / "train.npz", "macs=0.5", agent="reinforce", episodes=4, finetune_epochs=1, progress=False)
    (probes,) = result.report.probes
    assert len(probes) >= 2 and probes[0].removed == () and all(p.removed for p in probes[1:])
    assert result.students[0].metrics.macs <= 0.5 * result.teacher.macs


@pytest.mark.slow
def test_search_never_returns_less_than_the_uniform_baseline():
    """compress evaluates the uniform plan with each channel criterion, searches with the better
    criterion, and keeps the uniform plan when the search's best channel plan scores below it on
    the validation images. On the bundled demo teacher at 0.3x MACs a single random episode
    scores well below uniform (measured: 86-91 % vs 93 % on 300 images)."""
    import dataclasses

    from onnxcompress.compiler.data import Preprocess
    from onnxcompress.compiler.onnx_io import canonicalize, load_model
    from onnxcompress.config import CompressConfig
    from onnxcompress.pipeline import CRITERIA, _uniform_baseline, compress, prepare_data
    from onnxcompress.search.targets import Target
    from onnxcompress.models.demo import demo_data_paths, demo_teacher_path
    from onnxcompress.search.driver import SearchConfig, run_search

    teacher = load_model(demo_teacher_path())
    train, _ = demo_data_paths()
    target = Target(macs=0.3)
    # the data compress itself prepares (its default validation and calibration sizes)
    defaults = CompressConfig(targets=(target,))
    base = canonicalize(teacher)
    job = prepare_data(base, train, None, Preprocess.from_model(teacher), None, defaults.val_size, defaults.calib_size, 0)
    config = SearchConfig(agent="random", episodes=1, targets=(target,), val_limit=defaults.val_size,
                          calib_limit=defaults.calib_size, channel_multiple=1)
    chosen, uniform, both = _uniform_baseline(base, job, config)
    assert len(both) == len(CRITERIA) and uniform in both
    assert chosen.criterion in CRITERIA and chosen.agent == "random" and chosen.episodes == 1
    (best,) = uniform.best
    assert best.plan["passes"][0]["criterion"] == chosen.criterion
    # the chosen criterion is the one whose uniform plan scores best
    scores = {c: run_search(base, job.val, job.calibration, dataclasses.replace(config, agent="uniform", criterion=c),
                            progress=False).best[0].metrics.accuracy for c in CRITERIA}
    assert scores[chosen.criterion] == max(scores.values()) == best.metrics.accuracy
    # the random episode alone is worse than the baseline (so the check below can fail)...
    alone = run_search(base, job.val, job.calibration, chosen, progress=False).best[0].metrics.accuracy
    assert alone < best.metrics.accuracy
    # ...and compress returns the baseline's score or better
    config = CompressConfig(targets=(target,), agent="random", episodes=1, finetune_epochs=0, families=1, channel_multiple=1,
                            progress=False, seed=0)
    result = compress(demo_teacher_path(), train, config)
    student = result.students[0]
    assert student.search_accuracy is not None and student.search_accuracy >= best.metrics.accuracy - 1e-9
    assert result.report.evaluations >= 1 + len(CRITERIA)  # the search's own plus the uniform baselines


def test_compress_options_are_the_config_fields():
    """onnxcompress.compress takes CompressConfig's fields by name (no restated parameter list):
    an unknown name is a TypeError naming it, before any file is read."""


    import onnxcompress
    from onnxcompress.config import CompressConfig

    with pytest.raises(TypeError, match="unknown compress option.*epochs.*finetune_epochs"):
        onnxcompress.compress("missing.onnx", "missing.npz", "macs=0.5", epochs=3)
    with pytest.raises(TypeError, match="needs a target"):
        onnxcompress.compress("missing.onnx", "missing.npz")
    config = CompressConfig.from_options(["macs=0.5", "size=0.3"], classes=[2, 0], checkpoint_dir="ck", seed=4)
    assert config.classes == (2, 0) and str(config.checkpoint_dir) == "ck" and len(config.targets) == 2
    assert config.with_options("macs=0.2", agent="ddpg").targets[0].macs == 0.2 and config.with_options(agent="ddpg").seed == 4


def test_large_training_sets_fine_tune_in_large_batches_on_every_core():
    import os

    from onnxcompress.pipeline import LARGE_DATA, finetune_config

    small = finetune_config(3, 0, None, "cpu", 5_000)
    large = finetune_config(3, 0, None, "cpu", LARGE_DATA)
    assert (small.batch_size, small.threads) == (16, 1)
    assert (large.batch_size, large.threads) == (64, os.cpu_count() or 1)
    assert finetune_config(3, 0, None).batch_size == 16  # probes: the small-data recipe


def test_search_config_for_is_what_compress_searches_with():
    """bench/transfer_bench.py searches with pipeline.search_config_for: it must carry compress's
    options (agent, episodes, seed, validation and calibration sizes, widths, policy files)."""
    from onnxcompress.config import CompressConfig
    from onnxcompress.pipeline import DEFAULT_EPISODES, search_config_for

    config = CompressConfig.from_options("macs=0.5", agent="reinforce", episodes=7, seed=3, val_size=50, calib_size=32,
                                         channel_multiple=4, progress=False)
    cfg = search_config_for(config, save_policy="a.pt", load_policy="b.pt")
    assert (cfg.agent, cfg.episodes, cfg.seed, cfg.val_limit, cfg.calib_limit, cfg.channel_multiple) == ("reinforce", 7, 3, 50, 32, 4)
    assert (cfg.save_policy, cfg.load_policy) == ("a.pt", "b.pt")
    assert cfg.targets == config.targets and cfg.resolved_stages() == ("remove", "prune")
    default = search_config_for(CompressConfig.from_options("macs=0.5", progress=False))
    assert default.agent == "ddpg" and default.episodes == DEFAULT_EPISODES["ddpg"] and default.load_policy is None

"""The evaluation inside a run: implicit runs judged by HR@10, one draw of negatives for every method."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import securefedrec.cli
import securefedrec.data.negatives
from securefedrec import ExperimentConfig, Simulation, run_experiment
from securefedrec.cli import main
from securefedrec.config import sections
from securefedrec.data import sample_negatives
from securefedrec.errors import CheckpointError, ConfigError
from securefedrec.models import registry
from tests.data.fake_models import Popularity, Shuffled


def _rewrite_meta(path: Path, drop: str) -> None:
    """Remove ``drop`` from a checkpoint's saved configuration (as a checkpoint before it existed)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    del meta["config"][drop]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


SMALL = dict(synthetic_users=120, synthetic_items=150, synthetic_ratings_per_user=15, device="cpu",
             split="loo")


@pytest.fixture
def implicit_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test-only implicit models for the duration of a test."""
    names = (*sections.MODEL_NAMES, "popularity", "shuffled")
    monkeypatch.setattr(sections, "MODEL_NAMES", names)
    monkeypatch.setattr(securefedrec.cli, "MODEL_NAMES", names)
    monkeypatch.setitem(registry.MODELS, "popularity", Popularity)
    monkeypatch.setitem(registry.MODELS, "shuffled", Shuffled)
    Popularity.candidates = []


def test_mf_on_implicit_feedback_is_refused_naming_model_and_feedback(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"--model mf .*explicit.*--feedback implicit"):
        Simulation(ExperimentConfig(feedback="implicit", model="mf", protocol="plaintext", **SMALL))
    assert main(["run", "--feedback", "implicit", "--model", "mf", "--rounds", "1", "--quiet"]) == 2
    assert "--model mf" in capsys.readouterr().err


def test_implicit_run_records_hr_each_round_and_reports_ranking_without_rmse(implicit_models: None) -> None:
    report = run_experiment(ExperimentConfig(feedback="implicit", model="popularity", protocol="plaintext",
                                             server_optimizer="fedavg", server_lr=1.0, sample_rate=1.0,
                                             rounds=2, seed=3, **SMALL))
    for record in report["rounds"]:
        assert record["rmse"] is None and record["mae"] is None
        assert 0 <= record["hr@10"] <= 1 and 0 <= record["ndcg@10"] <= record["hr@10"]
    final = report["final"]
    assert final["rmse"] is None and final["mae"] is None
    assert final["hr@10"] == report["rounds"][-1]["hr@10"]
    assert final["hr@10"] > 0.3  # popularity beats a random ranking (0.1) on Zipf data
    assert 0 < final["recall@20"] <= 1 and 0 < final["ndcg@20"] <= 1
    assert report["dataset"]["feedback"] == "implicit"


def test_every_method_of_a_run_ranks_the_same_negatives(implicit_models: None) -> None:
    asked = {}
    for model, protocol in (("popularity", "plaintext"), ("shuffled", "secagg+")):
        Popularity.candidates = []
        sim = Simulation(ExperimentConfig(feedback="implicit", model=model, protocol=protocol, rounds=1,
                                          sample_rate=0.5, seed=5, **SMALL))
        sim.run(progress=False)
        asked[model] = torch.cat(Popularity.candidates).numpy()
        np.testing.assert_array_equal(sim.ranking_task.negatives, sample_negatives(sim.dataset, 99, 5))
    np.testing.assert_array_equal(asked["popularity"], asked["shuffled"])
    other = Simulation(ExperimentConfig(feedback="implicit", model="popularity", protocol="plaintext",
                                        seed=6, **SMALL))
    assert not np.array_equal(other.ranking_task.negatives, sample_negatives(sim.dataset, 99, 5))


def test_negatives_are_drawn_once_per_run_not_per_round(implicit_models: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    draws = []
    real = securefedrec.data.negatives.sample_negatives

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        draws.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("securefedrec.metrics.sample_negatives", counting)
    run_experiment(ExperimentConfig(feedback="implicit", model="popularity", protocol="plaintext", rounds=3,
                                    **SMALL))
    assert len(draws) == 1


def test_explicit_run_keeps_rmse_per_round_and_reports_every_metric() -> None:
    report = run_experiment(ExperimentConfig(protocol="plaintext", rounds=2, factors=4, **SMALL))
    assert all(r["rmse"] is not None and r["hr@10"] is None for r in report["rounds"])
    final = report["final"]
    for key in ("rmse", "mae", "hr@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert final[key] is not None, key
    assert report["dataset"]["validation_ratings"] == 120


def test_cli_prints_an_implicit_summary(implicit_models: None, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    assert main(["run", "--feedback", "implicit", "--model", "popularity", "--split", "loo", "--rounds", "1",
                 "--protocol", "plaintext", "--synthetic-users", "60", "--synthetic-items", "150",
                 "--eval-negatives", "50", "--quiet", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "HR@10" in out and "Recall@20" in out and "RMSE" not in out
    assert "implicit feedback; @10 among 50 sampled negatives" in out


def test_config_checks_feedback_split_and_negatives() -> None:
    with pytest.raises(ConfigError, match="feedback: must be one of explicit, implicit"):
        ExperimentConfig.from_mapping({"feedback": "clicks"})
    with pytest.raises(ConfigError, match="eval_negatives: must be >= 1"):
        ExperimentConfig.from_mapping({"eval_negatives": 0})
    with pytest.raises(ConfigError, match="ml-1m has no official split"):
        ExperimentConfig.from_mapping({"dataset": "ml-1m", "data_dir": "x", "split": "u2"})
    assert ExperimentConfig.from_mapping({"split": "loo"}).data.split == "loo"
    from_file = ExperimentConfig.from_mapping({"dataset": "file", "data_file": "x", "split": "loo"})
    assert from_file.data.split == "loo"


def test_a_checkpoint_from_before_the_feedback_fields_is_explicit_with_99_negatives(tmp_path: Path) -> None:
    small = dict(SMALL, protocol="plaintext", factors=4)
    ckpt = tmp_path / "c.npz"
    Simulation(ExperimentConfig(rounds=1, **small)).run(checkpoint=ckpt, progress=False)
    for field in ("feedback", "eval_negatives"):
        _rewrite_meta(ckpt, field)
    Simulation(ExperimentConfig(rounds=2, **small)).load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="eval_negatives: checkpoint 99 vs run 50"):
        Simulation(ExperimentConfig(rounds=2, eval_negatives=50, **small)).load_checkpoint(ckpt)

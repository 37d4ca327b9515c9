"""The model registry, the ``model`` field of the config, and MF behind the Model interface."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.cli import main
from securefedrec.data import synthetic
from securefedrec.errors import CheckpointError, ConfigError
from securefedrec.models.base import RatingsByUser
from securefedrec.models.mf import MF, Hyper, Layout, solve_users
from securefedrec.models.names import MODEL_NAMES
from securefedrec.models.registry import MODELS, get_model

SMALL = dict(synthetic_users=40, synthetic_items=30, synthetic_ratings_per_user=10, factors=4,
             protocol="plaintext", device="cpu", rounds=1)


def test_config_names_are_the_registered_models() -> None:
    assert tuple(MODELS) == MODEL_NAMES
    assert all(cls.name == name for name, cls in MODELS.items())


def test_an_unknown_model_is_refused_with_the_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    names = "mf, implicit-mf, ncf, fism"
    with pytest.raises(ConfigError, match=rf"unknown model 'nope'; choose one of: {names}$"):
        get_model("nope")
    with pytest.raises(ConfigError, match=rf"--model: must be one of {names}, got 'nope'"):
        ExperimentConfig.from_mapping({"model": "nope"}, labels={"model": "--model"})
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", "nope"])
    assert exit_.value.code == 2 and "--model" in capsys.readouterr().err


def test_the_simulation_builds_the_configured_model() -> None:
    sim = Simulation(ExperimentConfig(model="mf", **SMALL))
    assert isinstance(sim.model, MF) and sim.layout is sim.model.layout
    assert set(sim.pool.local) == set(sim.model.local_shapes())
    assert sim.pool.local["user_factors"].shape == (40, 4)


def _rewrite_meta(path: Path, change: dict[str, object], drop: str | None = None) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["config"].update(change)
    if drop is not None:
        del meta["config"][drop]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_a_checkpoint_from_before_the_model_field_is_mf(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.npz"
    first = Simulation(ExperimentConfig(**SMALL))
    first.run(checkpoint=ckpt, progress=False)
    for key in ("model", "loss", "negatives", "weight_decay", "local_optimizer", "mlp_layers"):
        _rewrite_meta(ckpt, {}, drop=key)  # written before these fields existed
    resumed = Simulation(ExperimentConfig(**{**SMALL, "rounds": 2}))
    resumed.load_checkpoint(ckpt)
    assert resumed.next_round == 1
    np.testing.assert_array_equal(resumed.global_vec, first.global_vec)
    torch.testing.assert_close(resumed.pool.local["user_factors"], first.pool.local["user_factors"],
                               rtol=0, atol=0)
    _rewrite_meta(ckpt, {"model": "ncf"})
    with pytest.raises(CheckpointError, match="model: checkpoint 'ncf' vs run 'mf'"):
        Simulation(ExperimentConfig(**{**SMALL, "rounds": 2})).load_checkpoint(ckpt)


def test_mf_local_prediction_is_its_closed_form_and_scores_rank_like_predictions() -> None:
    ds = synthetic(30, 20, 8, seed=1)
    layout = Layout(ds.num_items, 4)
    model = MF(layout, Hyper(factors=4))
    g = model.init_global(ds.scale, torch.Generator().manual_seed(0)).float()
    batch = RatingsByUser(ds.train, ds.num_users).padded(np.arange(10), torch.device("cpu"), torch.float32)
    local = model.fit_local(g, batch, model.init_local(10, torch.float32, torch.Generator()))
    p, bu = solve_users(*layout.split(g), batch, model.hyper.lam_user)
    assert torch.equal(local["user_factors"], p) and torch.equal(local["user_bias"], bu)
    items = torch.arange(ds.num_items).expand(10, -1)
    scores = model.scores(g, local)  # another reduction order than predict: equal to float32 rounding
    wide = (-100.0, 100.0)
    torch.testing.assert_close(model.predict(g, local, items, wide), scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.scores(g, local, items[:, 3:7]), scores[:, 3:7], rtol=1e-5, atol=1e-5)
    mid = float(scores.median())  # half the predictions lie beyond it and are clamped to it
    clamped = model.predict(g, local, items, (-100.0, mid))
    torch.testing.assert_close(clamped, scores.clamp(max=mid), rtol=1e-5, atol=1e-5)
    assert float(clamped.max()) == mid


def test_mf_refuses_a_layout_and_hyper_parameters_of_different_sizes() -> None:
    with pytest.raises(ConfigError, match="4 factors, hyper-parameters 8"):
        MF(Layout(10, 4), Hyper(factors=8))

"""Resuming a ``--dp record`` run (DP-SGD per silo) from a checkpoint, bit for bit."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from securefedrec import ExperimentConfig, Simulation
from securefedrec.errors import CheckpointError
from securefedrec.privacy import SiloDPSGD

# three silos of 30 users, Poisson-sampled at 0.7: some silos sit rounds out, so their counts differ
SMALL: dict[str, Any] = dict(synthetic_users=90, synthetic_items=40, synthetic_ratings_per_user=12, factors=4,
                             protocol="plaintext", device="cpu", dp="record", silos=3, dp_batch_size=32,
                             sample_rate=0.7, local_lr=8.0, delta=1e-5)


@pytest.fixture(autouse=True)
def _quiet_opacus() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # secure RNG off, full backward hook
        yield


def _dpsgd(sim: Simulation) -> SiloDPSGD:
    assert isinstance(sim.privacy, SiloDPSGD)
    return sim.privacy


def _same_silos(a: SiloDPSGD, b: SiloDPSGD) -> None:
    for x, y in zip(a.silos, b.silos, strict=True):
        assert torch.equal(x.model.user.weight, y.model.user.weight)
        assert torch.equal(x.model.user_bias.weight, y.model.user_bias.weight)
        assert x.engine.accountant.history == y.engine.accountant.history and x.rounds == y.rounds
        assert torch.equal(x.optimizer.generator.get_state(), y.optimizer.generator.get_state())


def _strip(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rounds]


def test_opacus_draws_from_the_generator_we_pass() -> None:
    """make_private keeps our generator object (no copy): sampler, DataLoader seed and noise share it."""
    sim = Simulation(ExperimentConfig(rounds=1, noise_multiplier=1.0, **SMALL))
    for silo in _dpsgd(sim).silos:
        gen = silo.optimizer.generator
        assert isinstance(gen, torch.Generator)
        assert silo.loader.batch_sampler.generator is gen and silo.loader.generator is gen  # type: ignore[union-attr]


_MADE: dict[str, Simulation] = {}
FULL = ExperimentConfig(rounds=4, noise_multiplier=1.0, epsilon=30.0, **SMALL)


def _full() -> Simulation:
    """The uninterrupted run (built once per module)."""
    if "full" not in _MADE:
        sim = Simulation(FULL)
        sim.run(progress=False)
        _MADE["full"] = sim
    return _MADE["full"]


def test_a_record_run_checkpointed_after_k_rounds_and_resumed_to_r_equals_the_uninterrupted_run(
        tmp_path: Path) -> None:
    full = _full()
    ckpt = tmp_path / "short.npz"
    Simulation(FULL.replace(rounds=2)).run(progress=False, checkpoint=ckpt)
    resumed = Simulation(FULL)
    resumed.load_checkpoint(ckpt)
    third = resumed.run_round()["round"]
    after_third = resumed.global_vec.copy()
    report = resumed.run(progress=False)
    assert third == 3 and {s.rounds for s in _dpsgd(full).silos} != {4}  # Poisson: some silo sat out
    np.testing.assert_array_equal(resumed.global_vec, full.global_vec)
    _same_silos(_dpsgd(resumed), _dpsgd(full))
    # every round's epsilon (and rmse / mae where both evaluated) equals the uninterrupted run's
    assert [r["epsilon"] for r in resumed.rounds] == [r["epsilon"] for r in full.rounds]
    assert _strip(resumed.rounds)[2:] == _strip(full.rounds)[2:]
    assert report["final"]["epsilon"] == _dpsgd(full).epsilon() <= 30.0
    assert _dpsgd(resumed).silo_epsilons() == _dpsgd(full).silo_epsilons()

    # the restored generators are the ones that draw: the same restore with reseeded ones differs
    other = Simulation(FULL)
    other.load_checkpoint(ckpt)
    for silo in _dpsgd(other).silos:
        silo.optimizer.generator.manual_seed(1)
    other.run_round()
    assert not np.array_equal(other.global_vec, after_third)


def test_calibrated_sigma_resumes_and_a_longer_run_is_recalibrated_with_both_sigmas_accounted(
        tmp_path: Path) -> None:
    """Calibration is deterministic, so a resumed run gets the same sigma per silo; a run extended to more
    rounds is calibrated for them (more noise per step) and the history accounts both sigmas exactly."""
    cfg = ExperimentConfig(rounds=2, epsilon=6.0, **{**SMALL, "silos": 2, "sample_rate": 1.0})
    full = Simulation(cfg)
    full.run(progress=False)
    first = Simulation(cfg)
    first.run_round()
    first.save_checkpoint(tmp_path / "ckpt.npz")
    state = _dpsgd(first).state()
    resumed = Simulation(cfg)
    resumed.load_checkpoint(tmp_path / "ckpt.npz")
    resumed.run_round()
    np.testing.assert_array_equal(resumed.global_vec, full.global_vec)
    _same_silos(_dpsgd(resumed), _dpsgd(full))
    assert _dpsgd(resumed).epsilon() == _dpsgd(full).epsilon() <= 6.0

    longer = Simulation(cfg.replace(rounds=4))
    _dpsgd(longer).restore(1, state)
    longer.next_round = 1
    longer.run_round()
    epsilons = _dpsgd(longer).silo_epsilons()
    for j, (a, b) in enumerate(zip(_dpsgd(first).silos, _dpsgd(longer).silos, strict=True)):
        assert b.noise_multiplier > a.noise_multiplier
        per_round = a.engine.accountant.history[0][2]
        assert b.engine.accountant.history == [(a.noise_multiplier, a.sample_rate, per_round),
                                               (b.noise_multiplier, b.sample_rate, per_round)]
        ref = RDPAccountant()
        ref.history = list(b.engine.accountant.history)
        assert epsilons[j] == ref.get_epsilon(delta=1e-5)


# ---- what restore refuses ------------------------------------------------------------------------
def _silo(state: dict[str, Any], k: int = 1) -> dict[str, Any]:
    silo: dict[str, Any] = state["silos"][k]
    return silo


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(state: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        target: Any = state
        for key in keys:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = value
    return mutate


def _shrink_user(state: dict[str, Any]) -> None:
    user = _silo(state)["user"]
    user["shape"] = [user["shape"][0] - 1, user["shape"][1]]
    user["data"] = user["data"][: len(user["data"]) // 2]


def _short_rng(state: dict[str, Any]) -> None:
    import base64

    raw = base64.b64decode(_silo(state)["noise_rng"])
    _silo(state)["noise_rng"] = _silo(state)["sampler_rng"] = base64.b64encode(raw[:-8]).decode()


@pytest.mark.parametrize(
    ("mutate", "rounds_done", "match"),
    [
        (_set("mode", "user"), 4, "no record-level DP-SGD state"),
        (_set("version", None), 4, "field 'version'"),
        (lambda s: s.pop("version"), 4, "field 'version'"),
        (_set("rounds_done", 1), 4, "field 'rounds_done': 1, but 4 rounds"),
        (lambda s: None, 3, "field 'rounds_done': 4, but 3 rounds"),
        (_set("clip", 2.0), 4, "field 'clip'"),
        (_set("batch_size", 16), 4, "field 'batch_size'"),
        (_set("accountant", "prv"), 4, "field 'accountant'"),
        (lambda s: s["silos"].pop(), 4, "field 'silos': 2 silos, this run has 3"),
        (_set("silos.1.silo", 2), 4, "silo 1, field 'silo'"),
        (_shrink_user, 4, "silo 1, field 'user'"),
        (_set("silos.1.user.data", "not base64!"), 4, "silo 1, field 'user': not valid base64"),
        (_set("silos.1.user_bias.dtype", "float64"), 4, "silo 1, field 'user_bias'"),
        (_short_rng, 4, "silo 1, field 'sampler_rng'"),
        (_set("silos.1.noise_rng", "AAAA"), 4, "silo 1, field 'noise_rng'"),
        (_set("silos.1.sample_rate", 0.5), 4, "silo 1, field 'sample_rate'"),
        (_set("silos.1.noise_multiplier", 0.5), 4, "silo 1, field 'noise_multiplier'"),
        (_set("silos.1.rounds", 5), 4, "silo 1, field 'rounds'"),
        (_set("silos.1.history", [[1.0, 0.5, 7]]), 4, "silo 1, field 'history'"),
        (_set("silos.1.history", [[1.0, 0.5]]), 4, "silo 1, field 'history'"),
        (lambda s: _silo(s).pop("user_bias"), 4, "silo 1, field 'user_bias': missing"),
    ],
)
def test_restore_refuses_a_corrupted_or_mismatched_state(mutate: Callable[[dict[str, Any]], Any],
                                                         rounds_done: int, match: str) -> None:
    state = copy.deepcopy(_dpsgd(_full()).state())
    mutate(state)
    target = _MADE.setdefault("target", Simulation(FULL))  # fresh: nothing to build but the silos
    before = _dpsgd(target).state()
    with pytest.raises(CheckpointError, match=match):
        _dpsgd(target).restore(rounds_done, state)
    assert _dpsgd(target).state() == before  # validate, then change: nothing moved


def test_a_silo_state_round_trips_through_state_and_restore() -> None:
    source, target = _full(), Simulation(FULL)
    _dpsgd(target).restore(4, _dpsgd(source).state())
    assert _dpsgd(target).state() == _dpsgd(source).state()
    st = _dpsgd(source).silo_state(0)
    assert st.user.dtype == np.float32 and st.user.shape == (30, 4) and st.sampler_rng == st.noise_rng

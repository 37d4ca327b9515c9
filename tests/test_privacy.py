"""Differential privacy: distributed Gaussian noise, Opacus accounting, budget stop, DP-SGD silos.

Statistical tests state their false-failure rate for an arbitrary seed; every
generator is seeded, so the suite itself is deterministic.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from protocols import AggregationAborted, RoundConfig, get_aggregator, sample_dropouts
from securefedrec import ExperimentConfig, Simulation
from securefedrec.cli import main
from securefedrec.errors import CheckpointError, ConfigError, PrivacyBudgetExhausted
from securefedrec.privacy import (
    ENCODING_SIGMAS,
    DistributedGaussian,
    PrivacyAccountant,
    SiloDPSGD,
    SkellamUserPrivacy,
    UserLevelPrivacy,
    calibrate_noise_multiplier,
    clip_l2,
    make_accountant,
    privacy_class,
    secure_generator,
)

SMALL: dict[str, Any] = dict(synthetic_users=120, synthetic_items=60, synthetic_ratings_per_user=15,
                             factors=4, protocol="plaintext", device="cpu")


def _std_band(n: int, z: float = 6.0) -> float:
    """Relative half-width for a sample std of n iid normals: z / sqrt(2n) (z=6: P(fail) ~ 2e-9)."""
    return z / math.sqrt(2 * n)


# --------------------------------------------------------------------------- mechanism
def test_clip_l2_bounds_rows_and_keeps_small_ones() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 1, (50, 40)) * rng.uniform(0.01, 3, (50, 1))
    out = clip_l2(rows, 1.5)
    norms = np.linalg.norm(out, axis=1)
    assert np.all(norms <= 1.5 + 1e-12)
    small = np.linalg.norm(rows, axis=1) <= 1.5
    np.testing.assert_array_equal(out[small], rows[small])
    # direction is kept
    big = ~small
    unit = rows[big] / np.linalg.norm(rows[big], axis=1)[:, None]
    np.testing.assert_allclose(out[big] / norms[big, None], unit)
    np.testing.assert_array_equal(clip_l2(np.zeros(5), 1.0), np.zeros(5))


@pytest.mark.parametrize("survivors", [8, 12, 16])
def test_sum_of_shares_has_std_sigma_c_times_sqrt_survivors_over_t(survivors: int) -> None:
    """Empirical std of the summed noise vs sigma*C*sqrt(s/t); false-failure rate ~2e-9 per case."""
    mech = DistributedGaussian(noise_multiplier=1.3, clip=0.7)
    t, L = 8, 20_000
    total = np.zeros(L)
    for cid in range(survivors):
        total += mech.privatize(np.zeros(L), t, np.random.default_rng([1, cid]))
    expected = mech.total_std * math.sqrt(survivors / t)
    assert abs(total.std() / expected - 1) < _std_band(L)
    assert abs(total.mean()) < 6 * expected / math.sqrt(L)
    if survivors == t:  # exactly the threshold: exactly sigma * C
        assert abs(total.std() / mech.total_std - 1) < _std_band(L)


def test_privatized_update_is_clipped_then_noised_and_fits_the_encoding_range() -> None:
    mech = DistributedGaussian(noise_multiplier=0.9, clip=2.0)
    delta = np.full(1000, 1.0)  # norm 31.6 -> clipped to 2
    noisy = mech.privatize(delta, threshold=4, rng=np.random.default_rng(3))
    residual = noisy - clip_l2(delta, 2.0)
    assert abs(residual.std() / mech.share_std(4) - 1) < _std_band(1000)
    assert np.all(np.abs(noisy) <= mech.encoding_range(4))
    assert mech.encoding_range(4, update_clip=0.5) == 0.5 + ENCODING_SIGMAS * mech.share_std(4)


def test_default_noise_source_is_fresh_os_entropy() -> None:
    mech = DistributedGaussian(noise_multiplier=1.0, clip=1.0)
    a, b = mech.privatize(np.zeros(16), 1), mech.privatize(np.zeros(16), 1)
    assert not np.array_equal(a, b)
    assert not np.array_equal(secure_generator().random(4), secure_generator().random(4))
    same = [mech.privatize(np.zeros(16), 1, np.random.default_rng(9)) for _ in range(2)]
    np.testing.assert_array_equal(*same)


# --------------------------------------------------------------------------- accounting
@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.01, 200), (0.8, 0.2, 30), (2.0, 1.0, 10)])
def test_epsilon_equals_opacus_rdp_stepped_the_same(sigma: float, q: float, steps: int) -> None:
    ours = PrivacyAccountant(noise_multiplier=sigma, sample_rate=q, delta=1e-5)
    theirs = RDPAccountant()
    for _ in range(steps):
        ours.step()
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.epsilon() == theirs.get_epsilon(delta=1e-5)
    assert ours.opacus().history == theirs.history


def test_epsilon_equals_opacus_prv() -> None:
    ours = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.05, delta=1e-6, accountant="prv")
    theirs = PRVAccountant()
    for _ in range(20):
        ours.step()
        theirs.step(noise_multiplier=1.0, sample_rate=0.05)
    assert ours.epsilon() == pytest.approx(theirs.get_epsilon(delta=1e-6), rel=1e-9)


def test_calibration_is_opacus_get_noise_multiplier_and_meets_the_budget() -> None:
    sigma = calibrate_noise_multiplier(2.0, 1e-5, 0.1, 50)
    assert sigma == get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.1, steps=50)
    acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=0.1, delta=1e-5, budget=2.0)
    for _ in range(50):
        acc.step()
    assert 2.0 - 0.05 < acc.epsilon() <= 2.0
    with pytest.raises(PrivacyBudgetExhausted, match="budget 2"):
        acc.check_step()
    assert acc.steps == 50  # the refused step changed nothing


def test_impossible_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be met"):
        calibrate_noise_multiplier(1e-9, 1e-5, 1.0, 10)


def test_history_accounts_a_change_of_sigma() -> None:
    acc = PrivacyAccountant(noise_multiplier=2.0, sample_rate=0.1, delta=1e-5)
    for _ in range(5):
        acc.step()
    acc.noise_multiplier = 1.0
    for _ in range(3):
        acc.step()
    ref = RDPAccountant()
    for s in [2.0] * 5 + [1.0] * 3:
        ref.step(noise_multiplier=s, sample_rate=0.1)
    assert acc.history == ref.history
    assert acc.epsilon() == ref.get_epsilon(delta=1e-5)


# --------------------------------------------------------------------------- SecAgg+ with dropouts
def test_secagg_plus_with_dropouts_never_releases_less_than_sigma_c() -> None:
    """By construction every released sum has >= t shares; checked on real SecAgg+ rounds.

    Empirical std of L = 3000 coordinates of a sum of s shares: relative error
    ~ 1/sqrt(2L) = 1.3%; the bound sigma*C*sqrt(s/t) >= sigma*C is checked with a
    6-sigma band (false-failure rate ~2e-9 per round).
    """
    mech = DistributedGaussian(noise_multiplier=1.0, clip=0.5)
    n, L = 10, 3000
    t = math.ceil(0.5 * n)
    agg = get_aggregator("secagg+", rng=np.random.default_rng(0))
    released, partial = 0, 0
    for trial in range(6):
        cfg = RoundConfig(round_id=trial, clip_range=mech.encoding_range(t, 16.0), ring_bits=32, threshold=t)
        inputs = {c: mech.privatize(np.zeros(L), t, np.random.default_rng([trial, c])) for c in range(n)}
        plan = sample_dropouts(range(n), 0.1, np.random.default_rng([99, trial]))
        try:
            result = agg.aggregate(inputs, cfg, plan)
        except AggregationAborted:
            continue
        released += 1
        s = len(result.survivors)
        partial += s < n
        assert s >= t
        expected = mech.share_std(t) * math.sqrt(s)
        assert expected >= mech.total_std
        assert result.total.std() > mech.total_std * (1 - _std_band(L))
        assert abs(result.total.std() / expected - 1) < _std_band(L) + 1e-3  # + quantization
    assert released >= 4 and partial >= 2  # some released sums really lacked dropped clients


def test_simulation_with_secagg_plus_and_dropout_records_noise_at_least_sigma_c() -> None:
    cfg = ExperimentConfig(rounds=3, dp="user", noise_multiplier=1.0, clip=0.5, sample_rate=0.3,
                           dropout=0.1, **{**SMALL, "protocol": "secagg+", "synthetic_users": 40})
    report = Simulation(cfg).run(progress=False)
    released = [r for r in report["rounds"] if not r["aborted"] and r["clients"]]
    # the seeded rounds must really release sums, some of them with clients gone (else nothing is checked)
    assert len(released) >= 2 and any(r["dropped"] for r in released)
    for r in released:
        assert r["noise_std"] >= 1.0 * 0.5 * (1 - 1e-12)


# --------------------------------------------------------------------------- simulator
def test_user_dp_run_reports_opacus_epsilon_per_round() -> None:
    cfg = ExperimentConfig(rounds=4, dp="user", epsilon=3.0, delta=1e-5, clip=0.5, sample_rate=0.5, **SMALL)
    sim = Simulation(cfg)
    report = sim.run(progress=False)
    sigma = report["privacy"]["noise_multiplier"]
    assert sigma == calibrate_noise_multiplier(3.0, 1e-5, 0.5, 4)
    ref = RDPAccountant()
    for r in report["rounds"]:
        ref.step(noise_multiplier=sigma, sample_rate=0.5)
        assert r["epsilon"] == ref.get_epsilon(delta=1e-5)
    assert report["final"]["epsilon"] == report["rounds"][-1]["epsilon"] <= 3.0
    assert report["final"]["delta"] == 1e-5
    assert report["stopped"] is None


def test_server_epsilon_is_the_unamplified_gaussian_for_the_worst_case_user() -> None:
    """Against the server, which knows who was sampled: q = 1 steps, as many as the most-sampled client had.

    The budget (3.0) calibrates sigma and stops the run on the observer's epsilon, as before; the
    server's epsilon exceeds it (reported, not enforced)."""
    cfg = ExperimentConfig(rounds=4, dp="user", epsilon=3.0, delta=1e-5, clip=0.5, sample_rate=0.5, **SMALL)
    sim = Simulation(cfg)
    report = sim.run(progress=False)
    sigma = report["privacy"]["noise_multiplier"]
    counts: dict[int, int] = {}
    for r, row in enumerate(report["rounds"]):
        for c in sim.sample(r):  # the public Poisson sample of round r, replayed
            counts[c] = counts.get(c, 0) + 1
        worst = max(counts.values())
        ref = RDPAccountant()
        ref.history = [(sigma, 1.0, worst)]  # independent Opacus computation, no amplification
        assert row["server_epsilon"] == ref.get_epsilon(delta=1e-5)
        assert row["server_epsilon"] >= row["epsilon"]
    assert report["stopped"] is None and report["final"]["epsilon"] <= 3.0 < report["final"]["server_epsilon"]
    assert report["final"]["server_epsilon"] == report["rounds"][-1]["server_epsilon"]
    assert report["privacy"]["server_epsilon"] == report["final"]["server_epsilon"]
    assert report["privacy"]["server_rounds_worst_user"] == max(counts.values())


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_server_epsilon_equals_epsilon_when_every_client_takes_part(accountant: str) -> None:
    cfg = ExperimentConfig(rounds=3, dp="user", noise_multiplier=1.2, delta=1e-5, clip=0.5, sample_rate=1.0,
                           accountant=accountant, **SMALL)
    report = Simulation(cfg).run(progress=False)
    for row in report["rounds"]:
        assert row["server_epsilon"] == pytest.approx(row["epsilon"], rel=1e-9)
    ref = make_accountant(accountant)
    ref.history = [(1.2, 1.0, 3)]
    assert report["final"]["server_epsilon"] == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-6)


def test_server_participation_survives_a_checkpoint_and_old_ones_count_every_round() -> None:
    cfg = ExperimentConfig(rounds=4, dp="user", noise_multiplier=1.0, clip=0.5, sample_rate=0.5, **SMALL)
    privacy = UserLevelPrivacy.from_config(cfg)
    for r, clients in enumerate([[0, 1], [1, 2], [1]]):
        privacy.count_participants(clients)
        privacy.commit_round(r)
    assert privacy.worst_participation == 3  # client 1
    state = privacy.state()
    again = UserLevelPrivacy.from_config(cfg)
    again.restore(3, state)
    assert again.server_epsilon() == privacy.server_epsilon() and again.worst_participation == 3
    old = UserLevelPrivacy.from_config(cfg)
    old.restore(3, {"mode": "user", "history": state["history"]})  # written before participation counts
    assert old.worst_participation == 3 and old.server_epsilon() == privacy.server_epsilon()
    old.count_participants([5])
    old.commit_round(3)
    assert old.worst_participation == 4  # conservative: the floor counts every earlier round for everyone
    with pytest.raises(CheckpointError, match="participation counts do not fit 3 rounds"):
        UserLevelPrivacy.from_config(cfg).restore(3, {**state, "participation": {"1": 4}})


def test_budget_stop_ends_the_run_gracefully_before_overspending() -> None:
    cfg = ExperimentConfig(rounds=20, dp="user", noise_multiplier=1.0, epsilon=8.0, sample_rate=0.5, **SMALL)
    sim = Simulation(cfg)
    report = sim.run(progress=False)
    done = len(report["rounds"])
    acc = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.5, delta=cfg.privacy.delta)
    assert 0 < done < 20
    assert acc.epsilon(done) <= 8.0 < acc.epsilon(done + 1)
    assert report["final"]["epsilon"] <= 8.0
    assert "privacy budget exhausted" in report["stopped"]
    assert report["final"]["rmse"] > 0  # the model trained so far is still evaluated
    # a direct call refuses before changing anything
    before, nxt = sim.global_vec.copy(), sim.next_round
    with pytest.raises(PrivacyBudgetExhausted, match=f"round {done + 1}"):
        sim.run_round()
    np.testing.assert_array_equal(sim.global_vec, before)
    assert sim.next_round == nxt


def test_seeded_noise_reproduces_and_resume_keeps_the_accounting(tmp_path: Path) -> None:
    base = dict(dp="user", noise_multiplier=1.5, clip=0.5, sample_rate=0.5, **SMALL)
    full = Simulation(ExperimentConfig(rounds=4, **base))
    full.run(progress=False)
    ckpt = tmp_path / "dp.npz"
    Simulation(ExperimentConfig(rounds=2, **base)).run(checkpoint=ckpt, progress=False)
    resumed = Simulation(ExperimentConfig(rounds=4, **base))
    resumed.load_checkpoint(ckpt)
    assert isinstance(resumed.privacy, UserLevelPrivacy)
    assert resumed.privacy.accountant.steps == 2
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.global_vec, full.global_vec)
    assert [r["epsilon"] for r in resumed.rounds] == [r["epsilon"] for r in full.rounds]
    plain = tmp_path / "plain.npz"
    Simulation(ExperimentConfig(rounds=1, **SMALL)).run(checkpoint=plain, progress=False)
    other = Simulation(ExperimentConfig(rounds=2, **base))
    with pytest.raises(CheckpointError):
        other.load_checkpoint(plain)


def test_a_refused_privacy_state_leaves_the_simulation_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = dict(dp="user", noise_multiplier=1.5, clip=0.5, sample_rate=0.5, **SMALL)
    ckpt = tmp_path / "dp.npz"
    Simulation(ExperimentConfig(rounds=2, **base)).run(checkpoint=ckpt, progress=False)
    fresh = Simulation(ExperimentConfig(rounds=4, **base))
    before = fresh.global_vec.copy()
    privacy = fresh.privacy
    assert privacy is not None

    def refuse(rounds_done: int, state: Any) -> None:
        raise CheckpointError("privacy state refused")

    monkeypatch.setattr(privacy, "restore", refuse)
    with pytest.raises(CheckpointError, match="refused"):
        fresh.load_checkpoint(ckpt)
    np.testing.assert_array_equal(fresh.global_vec, before)
    assert fresh.next_round == 0 and fresh.optimizer.t == 0


def test_noise_reaches_the_aggregator_not_added_by_the_server() -> None:
    seen: list[np.ndarray] = []

    class Spy:
        name, secure = "spy", False

        def aggregate(self, inputs, config, dropout=None):  # type: ignore[no-untyped-def]
            seen.extend(inputs.values())
            return get_aggregator("plaintext").aggregate(inputs, config, dropout)

    cfg = ExperimentConfig(rounds=1, dp="user", noise_multiplier=2.0, clip=0.1, **SMALL)
    sim = Simulation(cfg, aggregator=Spy())  # type: ignore[arg-type]
    sim.run_round()
    t = sim.round_config(0, len(seen)).threshold
    share = 2.0 * 0.1 / math.sqrt(t)
    # clipped part has norm <= 0.1; the rest is the client's own noise share
    resid = np.concatenate(seen)
    assert abs(resid.std() / share - 1) < 0.05


# --------------------------------------------------------------------------- validation
def test_the_registry_picks_each_mode_and_lists_its_own_names_for_an_unknown_one() -> None:
    assert privacy_class("none", "gaussian") is None
    assert privacy_class("user", "gaussian") is UserLevelPrivacy
    assert privacy_class("user", "skellam") is SkellamUserPrivacy
    assert privacy_class("record", "gaussian") is SiloDPSGD
    with pytest.raises(ConfigError, match=r"^dp: must be one of none, user, record, got 'central'$"):
        privacy_class("central")
    with pytest.raises(ConfigError, match=r"^dp_mechanism: must be one of gaussian, skellam, got 'laplace'$"):
        privacy_class("user", "laplace")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(dp="user", epsilon=0.0), "epsilon"),
        (dict(dp="user", epsilon=-1.0), "epsilon"),
        (dict(dp="user", epsilon=float("nan")), "epsilon"),
        (dict(dp="user", epsilon=1.0, delta=0.0), "delta"),
        (dict(dp="user", epsilon=1.0, delta=1.0), "delta"),
        (dict(dp="user", epsilon=1.0, clip=0.0), "clip"),
        (dict(dp="user", epsilon=1.0, sample_rate=0.0), "sample_rate"),
        (dict(dp="user", epsilon=1.0, sample_rate=1.5), "sample_rate"),
        (dict(dp="user"), "epsilon"),
        (dict(dp="gaussian", epsilon=1.0), "dp"),
        (dict(dp="user", noise_multiplier=-1.0), "noise_multiplier"),
        (dict(dp="record", epsilon=1.0), "silos"),
        (dict(dp="user", epsilon=1.0, accountant="gdp2"), "accountant"),
    ],
)
def test_bad_privacy_settings_fail_before_training(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:") as info:
        ExperimentConfig(**overrides)
    assert isinstance(info.value, ValueError)


def test_cli_flags_and_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = str(tmp_path / "r.json")
    assert main(["run", "--dp", "user", "--epsilon", "0", "--quiet", "--report", report]) == 2
    assert "epsilon: must be > 0" in capsys.readouterr().err
    rc = main(["run", "--dp", "user", "--noise-multiplier", "1.0", "--epsilon", "50", "--clip", "0.5",
               "--delta", "1e-6", "--sample-rate", "0.5", "--rounds", "2", "--synthetic-users", "60",
               "--synthetic-items", "30", "--factors", "4", "--protocol", "plaintext", "--device", "cpu",
               "--quiet", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert "epsilon" in capsys.readouterr().out


# --------------------------------------------------------------------------- record-level DP-SGD
def test_record_level_silos_report_opacus_epsilon_and_stay_in_budget() -> None:
    warnings.simplefilter("ignore")
    cfg = ExperimentConfig(rounds=2, dp="record", silos=3, noise_multiplier=1.2, epsilon=5.0, delta=1e-5,
                           dp_batch_size=32, sample_rate=1.0, **{**SMALL, "synthetic_users": 45})
    sim = Simulation(cfg)
    report = sim.run(progress=False)
    assert isinstance(sim.privacy, SiloDPSGD)
    opacus_eps = [s.engine.get_epsilon(1e-5) for s in sim.privacy.silos]
    assert report["privacy"]["silo_epsilon"] == pytest.approx(opacus_eps, rel=1e-12)
    assert 0 < report["final"]["epsilon"] == max(opacus_eps) <= 5.0
    assert report["privacy"]["unit"] == "record (one rating)"
    assert len(report["rounds"]) == 2 and report["stopped"] is None


@pytest.mark.slow
def test_record_level_calibration_meets_the_budget() -> None:
    warnings.simplefilter("ignore")
    cfg = ExperimentConfig(rounds=2, dp="record", silos=3, epsilon=5.0, delta=1e-5, dp_batch_size=32,
                           sample_rate=1.0, **{**SMALL, "synthetic_users": 45})
    report = Simulation(cfg).run(progress=False)
    assert 4.8 < report["final"]["epsilon"] <= 5.0 and report["stopped"] is None


def test_record_level_delta_is_trained_minus_received_global_part() -> None:
    warnings.simplefilter("ignore")
    cfg = ExperimentConfig(rounds=1, dp="record", silos=2, noise_multiplier=1.0, dp_batch_size=32,
                           sample_rate=1.0, **{**SMALL, "synthetic_users": 30})
    sim = Simulation(cfg)
    assert sim.privacy is not None
    import torch

    g = torch.from_numpy(sim.global_vec)
    deltas = sim.privacy.train([0, 1], g, 0)
    assert deltas is not None and deltas.shape == (2, sim.layout.length)
    silo = sim.privacy.silos[1]  # type: ignore[attr-defined]
    np.testing.assert_allclose((silo.model.global_vector() - g.float()).numpy(), deltas[1].numpy())
    assert float(deltas.abs().sum()) > 0


def test_silos_must_not_exceed_users() -> None:
    with pytest.raises(ConfigError, match="silos"):
        Simulation(ExperimentConfig(rounds=1, silos=500, **SMALL))


def test_ghost_clipping_equals_materialized_per_sample_gradients() -> None:
    """Opacus ghost clipping (default) and hooks mode give the same DP-SGD step (same noise, same batches)."""
    warnings.simplefilter("ignore")
    import torch

    cfg = ExperimentConfig(rounds=1, silos=2, sample_rate=1.0, **{**SMALL, "synthetic_users": 30})
    sim = Simulation(cfg)
    g = torch.from_numpy(sim.global_vec)
    out = [
        SiloDPSGD(data=sim.pool.data, groups=sim.pool.groups, layout=sim.layout, hyper=sim.hyper,
                  epochs=1, lr=1.0, batch_size=16, clip=0.3, noise_multiplier=1.0, epsilon=None,
                  delta=1e-5, rounds=1, grad_sample_mode=mode).train([0, 1], g, 0)
        for mode in ("ghost", "hooks")
    ]
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="grad_sample_mode"):
        SiloDPSGD(data=sim.pool.data, groups=sim.pool.groups, layout=sim.layout, hyper=sim.hyper,
                  epochs=1, lr=1.0, batch_size=16, clip=0.3, noise_multiplier=1.0, epsilon=None,
                  delta=1e-5, rounds=1, grad_sample_mode="ew")

"""Distributed Skellam: integer noise in the ring, its RDP accounting, the run with --dp-mechanism skellam.

Statistical tests state their false-failure rate for an arbitrary seed; every
generator is seeded, so the suite itself is deterministic.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy.special import logsumexp
from scipy.stats import poisson

from protocols import RoundConfig, Stage, get_aggregator
from protocols.secagg import SecAggPlusAggregator
from securefedrec import ExperimentConfig, Simulation
from securefedrec.cli import build_parser, config_from_args, main
from securefedrec.errors import CheckpointError, ConfigError, PrivacyBudgetExhausted
from securefedrec.privacy import SkellamUserPrivacy
from securefedrec.privacy.accountants import (
    ORDERS,
    SkellamAccountant,
    calibrate_mu,
    poisson_subsampled_rdp,
    skellam_rdp,
)
from securefedrec.privacy.mechanisms import (
    SKELLAM_TAIL,
    DistributedSkellam,
    conditional_round,
    plan_skellam,
    rounded_l1_bound,
    rounded_l2_bound,
    skellam_tail,
)

TINY: dict[str, Any] = dict(synthetic_users=200, synthetic_items=60, synthetic_ratings_per_user=15, factors=4,
                            device="cpu")


def _eps(rdp: np.ndarray, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = opacus_rdp.get_privacy_spent(orders=ORDERS.astype(float), rdp=rdp, delta=delta)
    return float(eps)


def _skellam_logpmf(k: np.ndarray, lam: float) -> np.ndarray:
    """log P(Poisson(lam) - Poisson(lam) = k), summed in log space (accurate far into the tails).

    ``sum_j P(A = j + |k|) P(B = j)``; the terms peak at ``j <= lam``, so ``j`` up to
    ``lam + 60 sqrt(lam) + 60`` loses nothing measurable.
    """
    j = np.arange(int(lam + 60 * math.sqrt(lam) + 60) + 1)
    terms = poisson.logpmf(j[None, :] + np.abs(k)[:, None], lam) + poisson.logpmf(j, lam)[None, :]
    out: np.ndarray = logsumexp(terms, axis=1)
    return out


def _exact_skellam_renyi(mu: float, shift: int, alpha: int) -> float:
    """D_alpha(Sk(mu/2, mu/2) + shift || Sk(mu/2, mu/2)) by direct summation."""
    r = int(alpha * shift + 40 * math.sqrt(mu) + 60)
    k = np.arange(-r, r + 1)
    lq, lp = _skellam_logpmf(k, mu / 2), _skellam_logpmf(k - shift, mu / 2)
    return float(logsumexp(alpha * lp + (1 - alpha) * lq)) / (alpha - 1)


# --------------------------------------------------------------------------- (a) Skellam RDP
@pytest.mark.parametrize(("mu", "shift"), [(1.0, 1), (4.0, 3), (30.0, 1), (30.0, 3), (200.0, 1), (200.0, 3)])
def test_skellam_rdp_upper_bounds_the_exact_renyi_divergence_of_a_shift(mu: float, shift: int) -> None:
    # in one dimension an integer shift has Delta_1 = Delta_2 = shift; the theorem must bound the
    # true divergence (a formula off by the variance convention, alpha D^2 / (4 mu), fails here)
    alphas = np.array([2, 3, 4, 8, 16, 32])
    exact = np.array([_exact_skellam_renyi(mu, shift, int(a)) for a in alphas])
    bound = skellam_rdp(mu, shift, shift, alphas)
    assert np.all(bound >= exact * (1 - 1e-9))
    if mu >= 200:  # and is tight once the noise dwarfs the grid
        assert np.all(bound <= exact * 1.06)


@pytest.mark.parametrize(("l2", "dim", "z"), [(100.0, 10, 1.0), (1e3, 1000, 0.7), (2.0**18, 9900, 1.3),
                                               (2.0**20, 10**5, 3.0)])
def test_skellam_rdp_is_gaussian_rdp_plus_a_vanishing_surcharge(l2: float, dim: int, z: float) -> None:
    mu = (z * l2) ** 2  # Gaussian equivalent: sigma^2 = mu / Delta_2^2 = z^2
    l1 = rounded_l1_bound(l2, dim)
    gauss = ORDERS / (2 * z**2)
    sk = skellam_rdp(mu, l2, l1)
    assert np.all(sk >= gauss)
    assert np.all(sk <= gauss * 1.03)


def test_skellam_surcharge_matters_when_the_noise_is_small() -> None:
    # Delta_2 = 1, mu = 2 (a couple of integer units of noise): the surcharge is the constant
    # 3 Delta_1 / (2 mu) = 0.75 at high orders and doubles the Gaussian RDP at alpha = 2
    sk = skellam_rdp(2.0, 1.0, 1.0)
    gauss = ORDERS / (2 * (2.0 / 1.0))
    assert np.all(sk - gauss > 0.5)
    assert sk[0] > 2 * gauss[0]
    assert np.all(np.isinf(skellam_rdp(0.0, 1.0, 1.0)))


def test_rounding_bounds_known_answers() -> None:
    beta = math.exp(-0.5)  # sqrt(2 ln(1/beta)) = 1
    # c=10, d=4: min(10 + 2, sqrt(100 + 1 + 1 * (10 + 1))) = sqrt(112)
    assert rounded_l2_bound(10.0, 4, beta) == pytest.approx(math.sqrt(112), rel=1e-15)
    assert rounded_l2_bound(10.0, 4, 0.0) == 12.0
    assert rounded_l2_bound(0.1, 4, 1e-10) == 2.1  # tiny beta: the deterministic c + sqrt(d) wins
    assert rounded_l1_bound(3.0, 100) == 9.0  # |z_i| <= z_i^2 for integers
    assert rounded_l1_bound(50.0, 100) == 500.0  # sqrt(d) * l2


def test_conditional_rounding_never_exceeds_the_bound_and_stays_within_one_unit() -> None:
    rng = np.random.default_rng(3)
    d, c = 400, 30.0
    bound = rounded_l2_bound(c, d, math.exp(-0.5))
    for _ in range(200):
        y = rng.normal(size=d)
        y *= c / np.linalg.norm(y)
        z = conditional_round(y, bound, rng)
        assert z.dtype == np.int64
        assert float(np.dot(z, z)) <= bound**2
        assert np.all(np.abs(z - y) < 1)


# --------------------------------------------------------------------------- (b) subsampling
def _zhu_wang_by_hand(eps: dict[int, float], q: float, alpha: int) -> float:
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += math.comb(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * math.exp(eps[2])
    total += 3 * sum(math.comb(alpha, ell) * q**ell * (1 - q) ** (alpha - ell)
                     * math.exp((ell - 1) * eps[ell]) for ell in range(3, alpha + 1))
    return math.log(total) / (alpha - 1)


def test_zhu_wang_bound_matches_the_formula_written_out() -> None:
    orders = np.arange(2, 9)
    rdp = 0.3 * orders + 0.05 * orders**1.5  # any increasing curve
    got = poisson_subsampled_rdp(rdp, 0.07, orders)
    eps = dict(zip(orders.tolist(), rdp.tolist(), strict=True))
    for a, value in zip(orders.tolist(), got.tolist(), strict=True):
        assert value == pytest.approx(min(_zhu_wang_by_hand(eps, 0.07, a), eps[a]), rel=1e-12)
    np.testing.assert_array_equal(poisson_subsampled_rdp(rdp, 1.0, orders), rdp)
    with pytest.raises(ConfigError, match="consecutive"):
        poisson_subsampled_rdp(rdp[1:], 0.1, orders[1:])


@pytest.mark.parametrize(("q", "sigma"), [(0.01, 1.0), (0.01, 5.0), (0.2, 0.8), (0.2, 1.64), (0.5, 2.0),
                                          (0.9, 1.0)])
def test_zhu_wang_bound_upper_bounds_opacus_sampled_gaussian(q: float, sigma: float) -> None:
    exact = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ORDERS.astype(float))
    bound = poisson_subsampled_rdp(ORDERS / (2 * sigma**2), q)
    assert np.all(bound >= exact * (1 - 1e-9))
    # the general bound loses at most a factor 3 inside the log: + log(3) / (alpha - 1) per order
    assert np.all(bound <= exact + math.log(3) / (ORDERS - 1) + 1e-12)
    # and after 100 rounds, epsilon at delta 1e-5 is within a factor 3.5 of the exact one
    ours, theirs = _eps(bound * 100, 1e-5), _eps(exact * 100, 1e-5)
    assert theirs * (1 - 1e-12) <= ours <= 3.5 * theirs


# --------------------------------------------------------------------------- accounting + calibration
def test_accountant_composes_rounds_and_stops_before_the_budget() -> None:
    l2, l1 = 1000.0, rounded_l1_bound(1000.0, 50)
    acc = SkellamAccountant(mu=(1.2 * l2) ** 2, l2=l2, l1=l1, sample_rate=0.2, delta=1e-5, budget=3.0)
    one = poisson_subsampled_rdp(skellam_rdp(acc.mu, l2, l1), 0.2)
    done = 0
    while True:
        try:
            acc.check_step()
        except PrivacyBudgetExhausted as exc:
            assert f"stopped after {done} steps" in str(exc)
            break
        assert acc.step() == pytest.approx(_eps(one * (done + 1), 1e-5), rel=1e-12)
        done += 1
    assert done > 0 and acc.steps == done
    assert acc.epsilon() <= 3.0 < acc.epsilon(1)


def test_calibration_finds_the_smallest_mu_that_meets_the_budget() -> None:
    l2 = 2.0**18
    l1 = rounded_l1_bound(l2, 9900)
    mu = calibrate_mu(4.0, 1e-5, 0.2, 30, l2, l1)

    def eps(m: float) -> float:
        return _eps(poisson_subsampled_rdp(skellam_rdp(m, l2, l1), 0.2) * 30, 1e-5)

    assert eps(mu) <= 4.0 < eps(mu / (1 + 1e-5))
    with pytest.raises(ConfigError, match="cannot be met"):
        calibrate_mu(1e-9, 1e-12, 1.0, 1000, l2, l1)


# --------------------------------------------------------------------------- mechanism, ring sizing
def test_skellam_tail_bound_holds_against_the_exact_tail() -> None:
    for lam in (0.5, 5.0, 300.0):
        for prob in (1e-3, 1e-9, SKELLAM_TAIL):
            k = skellam_tail(lam, prob)
            beyond = np.arange(k, k + int(60 * math.sqrt(lam)) + 200)
            tail = 2 * math.exp(float(logsumexp(_skellam_logpmf(beyond, lam))))
            assert tail <= prob
    lam = 1e6  # Gaussian regime: 2^-80 is about 10.6 standard deviations
    assert 10.0 < skellam_tail(lam) / math.sqrt(2 * lam) < 11.5


def test_encoding_has_the_mechanism_scale_exactly_and_holds_the_shares() -> None:
    mech = DistributedSkellam(clip=0.5, scale=2.0**20, mu=(1.3 * 2.0**19) ** 2, dim=9900,
                              coordinate_bound=16.0)
    for n, t in ((10, 5), (100, 50), (200, 1)):
        fp = mech.encoding(n, t, 32)
        assert fp.scale == mech.scale and fp.step == 2.0**-20
        assert mech.max_units(t) <= fp.max_units < 2 * mech.max_units(t) + 2
    with pytest.raises(ConfigError, match="overflows ring_bits"):
        mech.encoding(10**6, 1, 32)


def test_plan_picks_a_power_of_two_scale_whose_worst_case_fits_the_ring() -> None:
    mech = plan_skellam(clip=1.0, dim=9900, max_clients=500, ring_bits=32, sample_rate=0.2, rounds=30,
                        delta=1e-5, epsilon=4.0, coordinate_bound=16.0)
    assert math.frexp(mech.scale)[0] == 0.5
    mech.encoding(500, 1, 32)  # every client sampled, threshold 1: no ConfigError
    bigger = DistributedSkellam(clip=1.0, scale=2 * mech.scale, mu=4 * mech.mu, dim=9900,
                                coordinate_bound=16.0)
    with pytest.raises(ConfigError):
        bigger.encoding(500, 1, 32)  # the next power of two would not fit
    with pytest.raises(ConfigError, match="raise --ring-bits"):
        plan_skellam(clip=1.0, dim=9900, max_clients=2**20, ring_bits=16, sample_rate=0.2, rounds=30,
                     delta=1e-5, noise_multiplier=1.0)


def test_privatize_returns_integer_units_near_the_scaled_clipped_delta() -> None:
    rng = np.random.default_rng(5)
    delta = rng.normal(size=(4, 300)) * 0.1
    quiet = DistributedSkellam(clip=0.5, scale=2.0**10, mu=0.0, dim=300)
    z = quiet.privatize(delta, threshold=2, rng=np.random.default_rng(1))
    assert z.dtype == np.int64 and z.shape == delta.shape
    scaled = delta * np.minimum(1.0, 0.5 / np.linalg.norm(delta, axis=1, keepdims=True)) * 2.0**10
    assert np.all(np.abs(z - scaled) < 1)
    assert np.all(np.linalg.norm(z, axis=1) <= quiet.l2_sensitivity)
    noisy = DistributedSkellam(clip=0.5, scale=2.0**10, mu=1e4, dim=300)
    assert noisy.privatize(delta[0], threshold=2).dtype == np.int64  # default source: OS-seeded


# --------------------------------------------------------------------------- (c) variance of the noise sum
@pytest.mark.parametrize(("n", "t", "survivors"), [(10, 5, 5), (10, 5, 8), (10, 5, 10), (7, 7, 7)])
def test_noise_sum_of_t_or_more_survivors_has_variance_at_least_mu(n: int, t: int, survivors: int) -> None:
    # zero deltas round to exactly zero, so the sum is pure noise: Sk(s lam, s lam), variance mu * s / t.
    # Sample variance over L = 40000 coordinates: relative std sqrt(2 / L) (excess kurtosis 1 / var is
    # negligible); a 6-sigma band fails with probability ~2e-9 per case for an arbitrary seed.
    length, mu = 40_000, 500.0
    mech = DistributedSkellam(clip=1.0, scale=2.0**8, mu=mu, dim=length)
    zeros = np.zeros((n, length))
    shares = np.stack([mech.privatize(zeros[j], t, np.random.default_rng([11, n, t, j])) for j in range(n)])
    assert shares.dtype == np.int64
    total = shares[:survivors].sum(axis=0)
    want = mu * survivors / t
    assert want >= mu
    band = 6 * math.sqrt(2 / length)
    assert abs(total.var() / want - 1) < band
    assert abs(total.mean()) < 6 * math.sqrt(want / length)


# --------------------------------------------------------------------------- (d) exact through SecAgg+
def test_noisy_integer_vectors_pass_through_secagg_plus_bit_exactly() -> None:
    rng = np.random.default_rng(8)
    n, length = 8, 500
    mech = DistributedSkellam(clip=0.5, scale=2.0**16, mu=(1.1 * 2.0**15) ** 2, dim=length,
                              coordinate_bound=16.0)
    t = 4
    fp = mech.encoding(n, t, 32)
    cfg = RoundConfig(round_id=2, clip_range=fp.clip_range, ring_bits=32, value_bits=fp.value_bits,
                      threshold=t, neighbors=6)  # t' = 5 of 7: two may drop
    inputs = {50 + i: mech.privatize(rng.normal(size=length) * 0.05, t, np.random.default_rng(i))
              for i in range(n)}
    plan = {51: Stage.MASKED_INPUT, 53: Stage.UNMASK}  # 51's input is out, 53's is in (it sent it)
    result = SecAggPlusAggregator(rng=np.random.default_rng(0)).aggregate(inputs, cfg, plan)
    assert result.survivors == frozenset(inputs) - {51}
    exact = np.sum([inputs[c] for c in sorted(result.survivors)], axis=0)
    np.testing.assert_array_equal(result.total, exact.astype(np.float64) * fp.step)
    np.testing.assert_array_equal(np.rint(result.total * mech.scale).astype(np.int64), exact)
    plain = get_aggregator("plaintext").aggregate(inputs, cfg, plan)
    np.testing.assert_array_equal(plain.total, result.total)


# --------------------------------------------------------------------------- configuration and CLI
SK: dict[str, Any] = dict(dp="user", epsilon=1.0, dp_mechanism="skellam")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(SK, dp_mechanism="laplace"), "^dp_mechanism: must be one of gaussian, skellam"),
        (dict(dp="none", dp_mechanism="skellam"), "^dp_mechanism: skellam .* needs --dp user"),
        (dict(SK, compression="q8"), "^dp_mechanism: .*compression"),
        (dict(SK, accountant="prv"), "^dp_mechanism: .*accountant"),
    ],
)
def test_bad_skellam_settings_fail_before_training(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ExperimentConfig(**overrides)
    assert isinstance(info.value, ValueError)


def test_cli_flag_sets_the_mechanism() -> None:
    args = build_parser().parse_args(["run", "--dp", "user", "--dp-mechanism", "skellam", "--epsilon", "4",
                                      "--protocol", "secagg+"])
    cfg = config_from_args(args)
    assert (cfg.privacy.mode, cfg.privacy.mechanism, cfg.federation.protocol, cfg.privacy.epsilon) == (
        "user", "skellam", "secagg+", 4.0)
    assert ExperimentConfig().privacy.mechanism == "gaussian"


# --------------------------------------------------------------------------- the run
def test_tiny_skellam_run_with_secagg_plus_trains_within_budget_like_gaussian() -> None:
    base = dict(rounds=3, sample_rate=0.3, dp="user", epsilon=4.0, delta=1e-5, clip=0.5, protocol="secagg+",
                **TINY)
    sims = {m: Simulation(ExperimentConfig(dp_mechanism=m, **base)) for m in ("gaussian", "skellam")}
    untrained = sims["skellam"].evaluate().rmse
    reports = {m: sim.run(progress=False) for m, sim in sims.items()}
    sk = reports["skellam"]
    assert isinstance(sims["skellam"].privacy, SkellamUserPrivacy)
    eps = [r["epsilon"] for r in sk["rounds"]]
    assert all(math.isfinite(e) for e in eps) and eps == sorted(eps) and 0 < eps[-1] <= 4.0
    assert sk["final"]["epsilon"] == eps[-1] and sk["stopped"] is None
    assert sk["privacy"]["secure_aggregation"] is True and sk["privacy"]["rounds_accounted"] == 3
    mech = sims["skellam"].privacy.mechanism
    released = [r for r in sk["rounds"] if r["clients"] and not r["aborted"]]
    assert len(released) >= 2  # the seeded rounds really release sums (else nothing below is checked)
    for r in released:
        assert r["noise_std"] >= mech.total_std * (1 - 1e-12)
    # against the server (no amplification, worst-case user): more than the observer's, at q = 1 steps
    server = [r["server_epsilon"] for r in sk["rounds"]]
    assert all(s >= e for s, e in zip(server, eps, strict=True)) and server[-1] > eps[-1]
    accountant = sims["skellam"].privacy.accountant
    worst = sk["privacy"]["server_rounds_worst_user"]
    assert 1 <= worst <= 3 and sk["final"]["server_epsilon"] == server[-1]
    assert server[-1] == accountant._epsilon_of([(accountant.mu, 1.0, worst)])
    # it trains, and lands near the Gaussian run at the same budget (measured: 0.9447 vs 0.9417 from 0.966)
    assert sk["final"]["rmse"] < untrained - 0.01
    assert abs(sk["final"]["rmse"] - reports["gaussian"]["final"]["rmse"]) < 0.02


def test_clients_hand_integer_units_to_the_protocol() -> None:
    seen: list[np.ndarray] = []
    configs: list[RoundConfig] = []

    class Spy:
        name, secure = "spy", True

        def aggregate(self, inputs, config, dropout=None):  # type: ignore[no-untyped-def]
            seen.extend(inputs.values())
            configs.append(config)
            return get_aggregator("plaintext").aggregate(inputs, config, dropout)

    cfg = ExperimentConfig(rounds=1, dp="user", dp_mechanism="skellam", noise_multiplier=1.0, clip=0.5,
                           sample_rate=0.3, **{**TINY, "protocol": "plaintext"})
    sim = Simulation(cfg, aggregator=Spy())  # type: ignore[arg-type]
    sim.run_round()
    assert seen and all(v.dtype == np.int64 for v in seen)
    assert isinstance(sim.privacy, SkellamUserPrivacy)
    assert configs[0].value_bits is not None
    assert configs[0].clip_range * sim.privacy.mechanism.scale == 2 ** (configs[0].value_bits - 1) - 1


def test_budget_stop_and_resume_keep_the_skellam_accounting(tmp_path: Path) -> None:
    base = dict(dp="user", dp_mechanism="skellam", noise_multiplier=1.0, clip=0.5, sample_rate=0.5,
                protocol="plaintext", **TINY)
    stopped = Simulation(ExperimentConfig(rounds=20, epsilon=6.0, **base)).run(progress=False)
    assert 0 < len(stopped["rounds"]) < 20 and "privacy budget exhausted" in stopped["stopped"]
    assert stopped["final"]["epsilon"] <= 6.0
    full = Simulation(ExperimentConfig(rounds=3, **base))
    full.run(progress=False)
    ckpt = tmp_path / "sk.npz"
    Simulation(ExperimentConfig(rounds=2, **base)).run(checkpoint=ckpt, progress=False)
    resumed = Simulation(ExperimentConfig(rounds=3, **base))
    resumed.load_checkpoint(ckpt)
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.global_vec, full.global_vec)
    assert [r["epsilon"] for r in resumed.rounds] == [r["epsilon"] for r in full.rounds]
    gauss = tmp_path / "g.npz"
    Simulation(ExperimentConfig(rounds=1, **{**base, "dp_mechanism": "gaussian"})).run(checkpoint=gauss,
                                                                                         progress=False)
    with pytest.raises(CheckpointError):  # another configuration (mechanism differs)
        Simulation(ExperimentConfig(rounds=2, **base)).load_checkpoint(gauss)
    privacy = Simulation(ExperimentConfig(rounds=2, **base)).privacy
    assert isinstance(privacy, SkellamUserPrivacy)
    with pytest.raises(CheckpointError, match="no Skellam"):
        privacy.restore(1, {"mode": "user", "history": [[1.0, 0.5, 1]]})


def test_cli_run_end_to_end_reports_epsilon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--dp", "user", "--dp-mechanism", "skellam", "--epsilon", "4", "--protocol", "secagg+",
               "--rounds", "2", "--synthetic-users", "60", "--synthetic-items", "30", "--factors", "4",
               "--sample-rate", "0.5", "--device", "cpu", "--quiet", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert "privacy: epsilon 4 at delta 1e-05" in capsys.readouterr().out


def test_checkpoint_written_before_the_mechanism_field_resumes_as_gaussian(tmp_path: Path) -> None:
    base = dict(dp="user", noise_multiplier=1.0, clip=0.5, sample_rate=0.5, protocol="plaintext", **TINY)
    ckpt = tmp_path / "old.npz"
    Simulation(ExperimentConfig(rounds=1, **base)).run(checkpoint=ckpt, progress=False)
    with np.load(ckpt) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    del meta["config"]["dp_mechanism"]  # as written by a version without the field
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(ckpt, **arrays)  # type: ignore[arg-type]
    resumed = Simulation(ExperimentConfig(rounds=2, **base))
    resumed.load_checkpoint(ckpt)
    assert resumed.next_round == 1
    with pytest.raises(CheckpointError, match="dp_mechanism"):
        Simulation(ExperimentConfig(rounds=2, **{**base, "dp_mechanism": "skellam"})).load_checkpoint(ckpt)

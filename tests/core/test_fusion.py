from __future__ import annotations

import numpy as np
import pytest

from protocols import RoundConfig
from protocols.encoding import FixedPoint
from securefedrec.errors import ConfigError
from securefedrec.server.optimizers import (
    NOISE_FLOOR_RATIO,
    OPTIMIZERS,
    FedAdam,
    get_optimizer,
    rounding_noise_std,
)


def test_registry_lists_names_in_errors() -> None:
    with pytest.raises(ConfigError, match="fedavg, fedavgm, fedadam, fedyogi"):
        get_optimizer("sgd")


def test_fedavg_applies_the_mean_delta() -> None:
    x = np.zeros(3)
    assert np.allclose(get_optimizer("fedavg").step(x, np.array([1.0, -2.0, 0.5])), [1.0, -2.0, 0.5])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_descends_a_quadratic(name: str) -> None:
    target = np.array([1.0, -3.0, 2.0])
    opt = get_optimizer(name, lr={"fedavg": 0.5, "fedavgm": 0.1, "fedadam": 0.1, "fedyogi": 0.1}[name])
    x = np.zeros(3)
    for _ in range(300):
        x = opt.step(x, target - x)  # the clients' mean delta points at the optimum
    assert np.allclose(x, target, atol=0.05)


def test_state_round_trips() -> None:
    a, b = FedAdam(lr=0.1), FedAdam(lr=0.1)
    x = np.zeros(4)
    for _ in range(3):
        x = a.step(x, np.ones(4))
    b.load_state_dict(a.state_dict())
    assert np.allclose(a.step(x, np.ones(4)), b.step(x, np.ones(4)))


def test_server_decay_shrinks_the_item_part_only() -> None:
    opt = get_optimizer("fedavg", 1.0).with_decay(0.1, span=3)
    x = opt.step(np.array([1.0, -2.0, 4.0, 3.5]), np.array([1.0, 0.0, 0.0, 0.5]))
    np.testing.assert_allclose(x, [1.8, -1.8, 3.6, 4.0])  # (x + delta) * 0.9 on the first 3; the last is free
    with pytest.raises(ConfigError, match="server_decay"):
        get_optimizer("fedavg").with_decay(1.0, span=3)


def test_server_decay_bounds_a_constant_push() -> None:
    # a coalition that pushes a coordinate by p every round moves it to p (1 - lam) / lam at most
    opt = get_optimizer("fedavg", 1.0).with_decay(0.05, span=1)
    x = np.zeros(2)
    for _ in range(2000):
        x = opt.step(x, np.array([0.1, 0.1]))
    assert x[0] == pytest.approx(0.1 * 0.95 / 0.05, rel=1e-9)
    assert x[1] == pytest.approx(200.0)  # outside the span: no bound


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_lazy_step_leaves_unselected_coordinates_alone(name: str) -> None:
    rng = np.random.default_rng(0)
    dense, lazy = get_optimizer(name), get_optimizer(name)
    x_dense = x_lazy = rng.normal(size=6)
    for _ in range(3):
        d = rng.normal(size=6)
        x_dense = dense.step(x_dense, d)
        x_lazy = lazy.step(x_lazy, d, coords=np.arange(6))
    np.testing.assert_array_equal(x_dense, x_lazy)  # all coordinates selected = the dense step
    before = x_lazy.copy()
    after = lazy.step(x_lazy, rng.normal(size=6), coords=np.array([1, 4]))
    np.testing.assert_array_equal(after[[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    assert np.all(after[[1, 4]] != before[[1, 4]])


def test_lazy_adam_corrects_bias_per_coordinate() -> None:
    # a coordinate first sent in round 5 takes Adam's first step, lr * sign(delta), not a damped one
    opt = FedAdam(lr=0.1)
    x = np.zeros(4)
    for _ in range(4):
        x = opt.step(x, np.array([1.0, 0.0, 0.0, 0.0]), coords=np.array([0]))
    x = opt.step(x, np.array([0.0, 0.0, -2.0, 0.0]), coords=np.array([2]))
    assert x[2] == pytest.approx(-0.1, rel=1e-5)
    assert x[1] == x[3] == 0.0


def test_rounding_noise_std_is_half_a_step_per_sqrt_client() -> None:
    config = RoundConfig(clip_range=16.0, ring_bits=32)
    fp = FixedPoint.for_sum(900, 16.0, 32)
    assert rounding_noise_std(config, 900) == pytest.approx(0.5 * fp.step * 30)


def test_fedadam_does_not_walk_on_the_rounding_noise_of_secure_aggregation() -> None:
    """Coordinates whose clients' deltas cancel: the true mean is 0, the masked sum's is its rounding noise.

    The plaintext sum leaves them where they are. Adam divides by ``sqrt(v) + tau``; with tau
    only a few noise stds wide (the old fixed 1e-6) the noise alone moved them ~0.1 lr per round.
    With the noise floor each round moves them at most lr / NOISE_FLOOR_RATIO, while the
    coordinates with a real mean delta still take full steps.
    """
    rng = np.random.default_rng(0)
    n, length, rounds, lr = 500, 400, 30, 0.03
    config = RoundConfig(clip_range=16.0, ring_bits=32)
    fp = FixedPoint.for_sum(n, config.clip_range, config.ring_bits)
    floor = rounding_noise_std(config, n) / n
    touched = np.arange(length) < length // 2
    old, new = FedAdam(lr=lr), FedAdam(lr=lr).with_noise_floor(floor)
    x_old, x_new = np.zeros(length), np.zeros(length)
    for _ in range(rounds):
        half = rng.normal(0.0, 1e-2, (n // 2, length))
        deltas = np.concatenate([half, -half]) + 1e-3 * touched  # untouched: pairs cancel exactly
        mean = fp.quantize(deltas, rng).sum(0) * fp.step / n  # what the masked sum decodes to
        x_old, x_new = old.step(x_old, mean), new.step(x_new, mean)
    bound = rounds * lr / NOISE_FLOOR_RATIO
    assert np.abs(x_new[~touched]).max() <= bound
    assert np.abs(x_old[~touched]).max() > 3 * bound  # the old behaviour: a random walk on the noise
    assert np.all(x_new[touched] > 0.5 * rounds * lr)  # real signal still moves at Adam's pace


def test_fedavg_ignores_the_noise_floor() -> None:
    a, b = get_optimizer("fedavg", 1.0), get_optimizer("fedavg", 1.0).with_noise_floor(1.0)
    delta = np.array([1e-9, -2e-9])
    assert np.array_equal(a.step(np.zeros(2), delta), b.step(np.zeros(2), delta))


def test_noise_floor_is_refused_when_not_a_std() -> None:
    with pytest.raises(ConfigError, match="noise floor"):
        FedAdam().with_noise_floor(-1.0)

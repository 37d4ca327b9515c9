"""Server optimizers: turn the decoded sum of client deltas into the next global vector.

The server sees only the sum of the survivors' deltas. It divides by the
*expected* number of sampled clients ``q * N`` (a fixed denominator, as in
DP-FedAvg, so one client's presence changes the update by a bounded amount)
to get the mean delta ``Delta``, then applies one of (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization"):

- ``fedavg``:  x += lr * Delta
- ``fedavgm``: m = beta * m + Delta;  x += lr * m
- ``fedadam``: m = b1 m + (1-b1) Delta; v = b2 v + (1-b2) Delta^2;  x += lr * m / (sqrt(v) + tau)
- ``fedyogi``: as fedadam with v -= (1-b2) Delta^2 sign(v - Delta^2)

Optional decoupled weight decay (``server_decay`` lambda, as in AdamW): after
the step, ``x[:span] *= 1 - lambda`` on the item part only (the intercept is
not shrunk). A server-side prior that shrinks items towards zero unless the
clients keep pulling them; it is what bounds a coalition of poisoning clients
for good (see :mod:`attacks.poisoning`): with every client's item row bounded
by tau, fake clients that are a fraction f of the population move the target's
row by at most ``lr * f * tau`` per round in expectation, so its norm stays
below ``lr * f * tau / lambda`` however long they push.

Notes:
    ``tau`` (the adaptivity) defaults to 1e-6. With secure aggregation every
    coordinate of the sum carries a little quantization noise, even items that
    nobody rated this round; an Adam with tau ~ 1e-8 would turn that noise into
    full-size steps. 1e-6 is two orders of magnitude above that noise for the
    default encoding and three below the mean delta of an item rated once.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import numpy as np

from securefedrec.errors import ConfigError

__all__ = ["OPTIMIZERS", "FedAdam", "FedAvg", "FedAvgM", "FedYogi", "ServerOptimizer", "get_optimizer"]


class ServerOptimizer(abc.ABC):
    """Stateful server update rule; state is float64 numpy arrays (checkpointable)."""

    name: ClassVar[str]

    def __init__(self, lr: float) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"server learning rate must be > 0, got {lr}")
        self.lr = lr
        self.t = 0
        self.weight_decay = 0.0
        self.decay_span = 0

    def with_decay(self, weight_decay: float, span: int) -> ServerOptimizer:
        """Shrink ``x[:span]`` by ``1 - weight_decay`` after every step (module docstring); returns self."""
        if not (math.isfinite(weight_decay) and 0 <= weight_decay < 1):
            raise ConfigError(f"server_decay: must be in [0, 1), got {weight_decay}")
        if span < 0:
            raise ConfigError(f"decay span must be >= 0, got {span}")
        self.weight_decay, self.decay_span = float(weight_decay), int(span)
        return self

    @abc.abstractmethod
    def _direction(self, delta: np.ndarray) -> np.ndarray:
        """The step to add (before nothing else) given the mean delta; updates the moments."""

    def step(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Return the new global vector given the mean client delta."""
        if delta.shape != params.shape:
            raise ConfigError(f"delta has shape {delta.shape}, global vector {params.shape}")
        self.t += 1
        result: np.ndarray = params + self._direction(np.asarray(delta, np.float64))
        if self.weight_decay:
            result[: self.decay_span] *= 1.0 - self.weight_decay
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (arrays and counters)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, (np.ndarray, int, float))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for k, v in state.items():
            setattr(self, k, v)


class FedAvg(ServerOptimizer):
    """x += lr * Delta."""

    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        super().__init__(lr)

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        return self.lr * delta


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019)."""

    name = "fedavgm"

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.m: np.ndarray | None = None

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        self.m = delta.copy() if self.m is None else self.momentum * self.m + delta
        return self.lr * self.m


class FedAdam(ServerOptimizer):
    """Adam on the server with bias correction and adaptivity ``tau``."""

    name = "fedadam"

    def __init__(self, lr: float = 0.03, beta1: float = 0.9, beta2: float = 0.999, tau: float = 1e-6) -> None:
        super().__init__(lr)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got ({beta1}, {beta2})")
        if tau <= 0:
            raise ConfigError(f"tau must be > 0, got {tau}")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * d2

    def _direction(self, delta: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m = np.zeros_like(delta)
            self.v = np.zeros_like(delta)
        self.m = self.beta1 * self.m + (1 - self.beta1) * delta
        self.v = self._second_moment(self.v, delta * delta)
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.tau)


class FedYogi(FedAdam):
    """Yogi's additive second moment (Zaheer et al. 2018)."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        second: np.ndarray = v - (1 - self.beta2) * d2 * np.sign(v - d2)
        return second


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam, FedYogi)
}


def get_optimizer(name: str, lr: float | None = None) -> ServerOptimizer:
    """Build the optimizer registered as ``name`` (learning rate = its default if ``None``)."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown server optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}"
        ) from None
    return cls() if lr is None else cls(lr=lr)  # type: ignore[call-arg]

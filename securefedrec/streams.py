"""Ids of the seeded random streams of a simulated run, in one place so none collide.

Round ``r`` of a run with seed ``s`` draws stream ``X`` from
``numpy.random.default_rng([s, r, X])``; a resumed run therefore reproduces the
uninterrupted one. Simulation only: secrets (keys, masks) never come from here.
This module imports nothing, so light processes (Flower ClientApps) can use it.
"""

__all__ = [
    "CENTRAL", "DOWNLINK", "DROPOUT", "EVAL_NEGATIVES", "NOISE", "ROTATE", "ROUNDING", "SAMPLING", "SELECT",
    "SILO", "TRAINING",
]

SAMPLING = 0
"""Poisson client sampling."""
DROPOUT = 1
"""The simulated dropout plan."""
ROUNDING = 2
"""Stochastic rounding of the fixed-point encoding (spawned per client)."""
NOISE = 3
"""Per-client DP noise, ``[seed, r, NOISE, client]`` (when not cryptographic)."""
TRAINING = 4
"""What local training samples (negative items, dropout), one torch generator per round."""
SILO = 11
"""Silo grouping and per-silo seeds (``[seed, SILO, ...]``, not per round)."""
EVAL_NEGATIVES = 12
"""The evaluation negatives (``[seed, EVAL_NEGATIVES]``, once per run, not per round)."""
CENTRAL = 206
"""The centralised baseline's generator (``[seed, CENTRAL]``, not per round; server/central.py)."""
SELECT = 101
"""The public random-k coordinate selection."""
DOWNLINK = 102
"""Stochastic rounding of the compressed broadcast."""
ROTATE = 103
"""The public random signs of the ``mod:B`` rotation."""

"""The names of the registered models and of their choices, without importing torch.

:mod:`securefedrec.config` and the CLI validate ``--model`` (and the implicit models'
``--loss``, ``--local-optimizer``, ``--mlp-layers``) against these;
:data:`securefedrec.models.registry.MODELS` registers the same names and feedback kinds
(tests/models/test_implicit_models.py keeps them equal).
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "FUSION_REG",
    "MEMBER_SETTINGS",
    "MODEL_DEFAULTS",
    "MODEL_SETTINGS",
    "IMPLICIT_MODELS",
    "CONTENT_WEIGHTINGS",
    "LOCAL_OPTIMIZERS",
    "LOSSES",
    "MODEL_FEEDBACK",
    "MODEL_NAMES",
    "format_member_settings",
    "parse_fusion",
    "parse_layers",
    "parse_member_settings",
]

MODEL_NAMES = ("mf", "implicit-mf", "ncf", "fism", "content", "popularity")
"""``--model``: mf = explicit biased matrix factorization; implicit-mf = matrix factorization of
implicit feedback with sampled negatives; ncf = NeuMF (GMF + MLP towers, He et al. WWW'17);
fism = implicit MF whose user is also its recency-weighted latest interactions (models/fism.py);
content = items scored from their features (genres, title words, --item-features), either kind;
popularity = item popularity and item means from the secure sum of the clients' counts."""

MODEL_FEEDBACK: dict[str, tuple[str, ...]] = {
    "mf": ("explicit",),
    "implicit-mf": ("implicit",),
    "ncf": ("implicit",),
    "fism": ("implicit",),
    "content": ("explicit", "implicit"),
    "popularity": ("explicit", "implicit"),
}
"""Model name -> the kinds of data it learns from (its class's ``feedback``)."""

IMPLICIT_MODELS = ("implicit-mf", "ncf", "fism", "content")
"""The models trained with sampled negatives on implicit data (they take ``--loss``, ``--negatives``)."""
DEFAULT_MODEL = {"explicit": "mf", "implicit": "implicit-mf"}
"""The model a run trains when ``--model`` is not given, by ``--feedback``."""

MODEL_SETTINGS = ("local_lr", "local_epochs", "weight_decay", "server_lr", "rounds")
"""The flat keys whose default is the model's own (:data:`MODEL_DEFAULTS`), not one value for all."""

_MF_TRAINING: dict[str, Any] = {"local_lr": 1.0, "local_epochs": 1, "weight_decay": 0.01, "server_lr": None,
                                "rounds": 30}
MODEL_DEFAULTS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType({
    name: MappingProxyType({**_MF_TRAINING, **tuned}) for name, tuned in {
        "mf": {},
        "implicit-mf": {"local_lr": 30.0, "local_epochs": 2, "weight_decay": 0.0},
        "ncf": {"local_lr": 10.0, "local_epochs": 2, "weight_decay": 0.0, "server_lr": 0.03},
        "fism": {"local_lr": 5.0, "local_epochs": 2, "weight_decay": 0.0, "rounds": 60},
        "content": {},
        "popularity": {},
    }.items()})
"""Model name -> the value of each of :data:`MODEL_SETTINGS` that a run takes when the user does not give
it (``server_lr`` None: the server optimizer's own). The one table of them: the config resolves them
(:class:`~securefedrec.config.ExperimentConfig`), ``benchmarks.ranking`` reads them.

mf's are the config sections' own defaults (explicit MF on ML-100K u1..u5); content and popularity keep
them. implicit-mf's and ncf's were measured on ML-100K loo (seeds 0 and 1, every client every round;
under mf's, implicit-mf reaches HR@10 ~0.51). fism's were chosen on ``--split loo``'s *validation* item
(seed 0, plaintext, HR@10 every 10 rounds; the test item never seen): local lr 30 peaked at 0.742
(round 40) and fell to 0.725 at 60; lr 10 peaked at 0.770 (round 60), lr 5 at 0.772 (round 60, 0.770 /
0.765 / 0.764 at 70 / 80 / 90, falling to 0.739 at 100); server lr 0.05 with lr 10 peaked at 0.770
earlier (round 40). The centralised fism reaches 0.814 on the same validation item (30 epochs,
``benchmarks.ranking.CENTRAL_EPOCHS``); nothing tried on the federated side passed 0.787 there."""

MEMBER_SETTINGS = ("local_lr", "local_epochs", "weight_decay")
"""The settings of :data:`MODEL_SETTINGS` that each ``--fusion`` member may have its own of
(``--fusion-settings``); ``server_lr`` and ``rounds`` are one for the whole run."""

LOSSES = ("bce", "bpr")
"""``--loss`` of the implicit models: binary cross-entropy on positives and sampled negatives, or
Bayesian personalized ranking on (positive, sampled negative) pairs."""

FUSION_REG = {"explicit": 100.0, "implicit": 2.0}
"""``--fusion-reg`` when not given, by ``--feedback``: the pull of a client's fusion weights toward the
prior, in held-out observations (:mod:`securefedrec.models.fusion`). Explicit: ~10 held-out ratings a
client; on ML-100K u1, 20 let the personal weights follow their noise (personal worse than the prior's),
100 did not. Implicit: one validation item a client, which a strong pull would drown."""

CONTENT_WEIGHTINGS = ("rating", "item")
"""``--content-weighting`` of the content model on explicit data: each rating once, or each item once
(the loss weighted by the secure item counts; :mod:`securefedrec.models.content`)."""

LOCAL_OPTIMIZERS = ("sgd", "adam")
"""``--local-optimizer`` of the implicit models: the steps a client takes on its local copy
(sgd is the default; :mod:`securefedrec.models.implicit` says why)."""


def parse_layers(text: str) -> tuple[int, ...]:
    """``"64,32,16"`` -> ``(64, 32, 16)``: NCF's MLP widths, the first = user + item MLP embeddings.

    Raises:
        ValueError: not at least two comma-separated positive integers, or an odd first width
            (it is split evenly between the user's and the item's MLP embedding).
    """
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as 64,32,16, got {text!r}") from None
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"expected at least two positive widths such as 64,32,16, got {text!r}")
    if widths[0] % 2:
        raise ValueError(f"the first width is the user's plus the item's MLP embedding and must be even, "
                         f"got {widths[0]}")
    return widths


def parse_fusion(text: str) -> tuple[str, ...]:
    """``"mf,popularity"`` -> ``("mf", "popularity")``: the member models of ``--fusion``.

    Raises:
        ValueError: an unknown or repeated name, or none.
    """
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r} in {text!r}; members are comma-separated names "
                         f"from {', '.join(MODEL_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each member model once, got {text!r}")
    return names


def parse_member_settings(text: str) -> dict[str, dict[str, float | int]]:
    """``"ncf:local_lr=10.0,local_epochs=2;fism:local_lr=5.0"`` -> ``{"ncf": {"local_lr": 10.0,
    "local_epochs": 2}, "fism": {"local_lr": 5.0}}``: ``--fusion-settings``, each member's own values of
    :data:`MEMBER_SETTINGS`.

    Raises:
        ValueError: an unknown or repeated member or setting, a malformed entry, or a value out of range
            (``local_epochs`` an integer >= 1, ``local_lr`` > 0, ``weight_decay`` >= 0).
    """
    out: dict[str, dict[str, float | int]] = {}
    for entry in text.split(";"):
        member, colon, assignments = entry.strip().partition(":")
        if not colon or member not in MODEL_NAMES:
            raise ValueError(f"expected MEMBER:SETTING=VALUE[,...][;MEMBER:...] with a member of "
                             f"{', '.join(MODEL_NAMES)}, got {entry.strip()!r}")
        if member in out:
            raise ValueError(f"member {member!r} given twice in {text!r}")
        values: dict[str, float | int] = {}
        for assignment in assignments.split(","):
            key, equals, raw = (part.strip() for part in assignment.partition("="))
            if not equals or key not in MEMBER_SETTINGS or key in values:
                raise ValueError(f"{member}: expected one each of {', '.join(MEMBER_SETTINGS)} as "
                                 f"SETTING=VALUE, got {assignment.strip()!r}")
            try:
                value: float | int = int(raw) if key == "local_epochs" else float(raw)
            except ValueError:
                kind = "an integer" if key == "local_epochs" else "a number"
                raise ValueError(f"{member}: {key} must be {kind}, got {raw!r}") from None
            low_ok = value >= 1 if key == "local_epochs" else (value > 0 if key == "local_lr" else value >= 0)
            if not (math.isfinite(value) and low_ok):
                rule = {"local_epochs": ">= 1", "local_lr": "> 0", "weight_decay": ">= 0"}[key]
                raise ValueError(f"{member}: {key} must be {rule}, got {raw!r}")
            values[key] = value
        out[member] = values
    return out


def format_member_settings(settings: dict[str, dict[str, float | int]]) -> str | None:
    """The ``--fusion-settings`` text of ``settings`` (members and settings in the given order; floats as
    ``repr`` writes them, so that it reads back exactly); None when no member has any."""
    entries = [f"{member}:" + ",".join(f"{key}={value!r}" for key, value in values.items())
               for member, values in settings.items() if values]
    return ";".join(entries) or None

"""The differential-privacy modes and noise mechanisms by name (``--dp``, ``--dp-mechanism``).

A name picks its class here and nowhere else (as Opacus' ``accountants/registry.py``
does for accountants), and an unknown name is refused with the names of the
registry itself. The configuration and the CLI name the same modes without
importing torch (:data:`securefedrec.config.DP_MODES`, ``DP_MECHANISMS``,
``ACCOUNTANT_NAMES``); ``tests/core/test_cli.py`` keeps those tuples equal to
:data:`MODES`, :data:`MECHANISMS` and
:data:`~securefedrec.privacy.accountants.registry.ACCOUNTANTS`.

A new mode is a :class:`~securefedrec.privacy.base.RoundPrivacy` with a
:meth:`~securefedrec.privacy.base.RoundPrivacy.build` class method, one entry in
:data:`MODES` and its name in the config; a new user-level noise is one entry in
:data:`MECHANISMS` (:mod:`securefedrec.privacy.mechanisms.base` says what it needs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from securefedrec.errors import ConfigError
from securefedrec.privacy.base import RoundPrivacy
from securefedrec.privacy.dpsgd.silos import SiloDPSGD
from securefedrec.privacy.user import SkellamUserPrivacy, UserLevelPrivacy

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["DP_MECHANISMS", "DP_MODES", "MECHANISMS", "MODES", "build_privacy", "privacy_class"]

MECHANISMS: dict[str, type[RoundPrivacy]] = {
    "gaussian": UserLevelPrivacy,
    "skellam": SkellamUserPrivacy,
}
"""``--dp-mechanism`` -> the user-level DP mode with that noise."""

MODES: dict[str, type[RoundPrivacy] | Mapping[str, type[RoundPrivacy]] | None] = {
    "none": None,
    "user": MECHANISMS,
    "record": SiloDPSGD,
}
"""``--dp`` -> its class: ``none`` has none; ``user`` picks one of :data:`MECHANISMS` by its noise;
``record`` is DP-SGD in silos (Gaussian noise inside Opacus, whatever ``--dp-mechanism`` says)."""

DP_MODES = tuple(MODES)
"""``none``; ``user``: DP-FedAvg with distributed noise; ``record``: DP-SGD in silos."""

DP_MECHANISMS = tuple(MECHANISMS)
"""Noise of ``--dp user``: distributed Gaussian or Skellam."""


def privacy_class(mode: str, mechanism: str = "gaussian") -> type[RoundPrivacy] | None:
    """The class of DP mode ``mode``, with noise ``mechanism`` where it has a choice; ``None`` for none.

    Raises:
        ConfigError: an unknown mode or mechanism (the message lists the registered names).
    """
    try:
        entry = MODES[mode]
    except KeyError:
        raise ConfigError(f"dp: must be one of {', '.join(MODES)}, got {mode!r}") from None
    if entry is None or isinstance(entry, type):
        return entry
    try:
        return entry[mechanism]
    except KeyError:
        raise ConfigError(f"dp_mechanism: must be one of {', '.join(entry)}, got {mechanism!r}") from None


def build_privacy(config: ExperimentConfig, pool: Any, model: Any) -> RoundPrivacy | None:
    """The DP mode of an :class:`~securefedrec.config.ExperimentConfig` (``None`` for ``dp = "none"``).

    Args:
        config: the experiment (its ``dp`` and ``dp_mechanism`` pick the class).
        pool: the simulator's clients.
        model: the model clients train.
    """
    cls = privacy_class(config.privacy.mode, config.privacy.mechanism)
    return None if cls is None else cls.build(config, pool, model)

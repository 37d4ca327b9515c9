"""Explicit registry: protocol name -> aggregator class.

Implementations are imported on first use, so that ``protocols`` imports
without the optional ``phe``/``gmpy2`` packages. Error messages list the
names from this table, so they never go stale.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from protocols.base import Aggregator
from protocols.errors import ConfigError

__all__ = ["PROTOCOLS", "aggregator_class", "get_aggregator", "protocols_where"]

PROTOCOLS: dict[str, str] = {
    "plaintext": "protocols.plaintext:PlaintextAggregator",
    "secagg": "protocols.secagg:SecAggAggregator",
    "secagg+": "protocols.secagg:SecAggPlusAggregator",
    "paillier": "protocols.paillier:PaillierAggregator",
}
"""name -> "module:Class" of its :class:`~protocols.base.Aggregator`."""


def aggregator_class(name: str) -> type[Aggregator]:
    """The aggregator class registered as ``name``, not built: ask it for its capabilities.

    Imports the implementation (``paillier`` needs its optional extras).

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    try:
        target = PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown protocol {name!r}; choose one of: {', '.join(sorted(PROTOCOLS))}"
        ) from None
    module_name, class_name = target.split(":")
    cls: type[Aggregator] = getattr(importlib.import_module(module_name), class_name)
    return cls


def protocols_where(has: Callable[[type[Aggregator]], bool]) -> tuple[str, ...]:
    """The registered names whose class has the capability ``has`` asks for, in registry order.

    For error messages that list the valid choices: a protocol whose optional extras are
    not installed here is left out (it could not run anyway).
    """
    names = []
    for name in PROTOCOLS:
        try:
            cls = aggregator_class(name)
        except ImportError:
            continue
        if has(cls):
            names.append(name)
    return tuple(names)


def get_aggregator(name: str, **options: Any) -> Aggregator:
    """Build the aggregator registered as ``name`` with its ``options``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    aggregator: Aggregator = aggregator_class(name)(**options)
    return aggregator

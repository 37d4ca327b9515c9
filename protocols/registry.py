"""Explicit registry: protocol name -> aggregator class.

Implementations are imported on first use, so that ``protocols`` imports
without the optional ``phe``/``gmpy2`` packages. Error messages list the
names from this table, so they never go stale.
"""

from __future__ import annotations

import importlib
from typing import Any

from protocols.base import Aggregator
from protocols.errors import ConfigError

__all__ = ["PROTOCOLS", "get_aggregator"]

PROTOCOLS: dict[str, str] = {
    "plaintext": "protocols.plaintext:PlaintextAggregator",
    "secagg": "protocols.secagg:SecAggAggregator",
    "secagg+": "protocols.secagg:SecAggPlusAggregator",
    "paillier": "protocols.paillier:PaillierAggregator",
}
"""name -> "module:Class" of its :class:`~protocols.base.Aggregator`."""


def get_aggregator(name: str, **options: Any) -> Aggregator:
    """Build the aggregator registered as ``name`` with its ``options``.

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
    cls = getattr(importlib.import_module(module_name), class_name)
    aggregator: Aggregator = cls(**options)
    return aggregator

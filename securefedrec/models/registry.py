"""The model registry: ``--model NAME`` -> the :class:`~securefedrec.models.base.Model` class.

A new model subclasses :class:`~securefedrec.models.base.Model`, is added to
:data:`MODELS`, and its name to :data:`securefedrec.models.names.MODEL_NAMES`
(docs/ARCHITECTURE.md "How to add a model").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefedrec.errors import ConfigError
from securefedrec.models.base import Model
from securefedrec.models.fism import FISM
from securefedrec.models.implicit_mf import ImplicitMF
from securefedrec.models.mf import MF
from securefedrec.models.ncf import NCF

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["MODELS", "build_model", "get_model"]

MODELS: dict[str, type[Model]] = {cls.name: cls for cls in (MF, ImplicitMF, NCF, FISM)}
"""Name -> model class."""


def get_model(name: str) -> type[Model]:
    """The model class registered as ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def build_model(config: ExperimentConfig, num_items: int) -> Model:
    """The model ``config.model.name`` names, configured for ``num_items`` items."""
    return get_model(config.model.name).from_config(config, num_items)

"""The model registry: ``--model NAME`` -> the :class:`~securefedrec.models.base.Model` class.

A new model subclasses :class:`~securefedrec.models.base.Model`, is added to
:data:`MODELS`, and its name to :data:`securefedrec.models.names.MODEL_NAMES`
(docs/ARCHITECTURE.md "How to add a model").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securefedrec.errors import ConfigError
from securefedrec.models.base import Model
from securefedrec.models.content import ContentModel
from securefedrec.models.fism import FISM
from securefedrec.models.fusion import Fusion
from securefedrec.models.implicit_mf import ImplicitMF
from securefedrec.models.mf import MF
from securefedrec.models.names import parse_fusion
from securefedrec.models.ncf import NCF
from securefedrec.models.popularity import Popularity

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig
    from securefedrec.data import Dataset

__all__ = ["MODELS", "build_model", "get_model"]

MODELS: dict[str, type[Model]] = {
    cls.name: cls for cls in (MF, ImplicitMF, NCF, FISM, ContentModel, Popularity)
}
"""Name -> model class."""


def get_model(name: str) -> type[Model]:
    """The model class registered as ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def _member(config: ExperimentConfig, name: str, num_items: int, dataset: Dataset | None) -> Model:
    cls = get_model(name)
    if dataset is None:
        return cls.from_config(config, num_items)
    if dataset.num_items != num_items:
        raise ConfigError(f"build_model: {num_items} items asked for a data set of {dataset.num_items}")
    return cls.for_dataset(config, dataset)


def build_model(config: ExperimentConfig, num_items: int, *, dataset: Dataset | None = None) -> Model:
    """The model ``config.model.name`` names, configured for ``num_items`` items (for ``dataset``,
    the data set it trains on, when given: :meth:`Model.for_dataset`); with ``--fusion``, the
    :class:`~securefedrec.models.fusion.Fusion` of its members (each built from
    :meth:`~securefedrec.config.ExperimentConfig.member`); with ``--model-compression``
    behind a :class:`~securefedrec.models.compressed.CompressedModel`."""
    if config.model.fusion is not None:
        members = [_member(config.member(name), name, num_items, dataset)  # each with its own settings
                   for name in parse_fusion(config.model.fusion)]
        return Fusion.of(config, members)
    inner = _member(config, config.model.name, num_items, dataset)
    if config.model.compression == "none":
        return inner
    from securefedrec.models.compressed import CompressedModel
    from securefedrec.models.compression_spec import parse_model_compression

    return CompressedModel(inner, parse_model_compression(config.model.compression), config.run.seed)

"""The names of the registered models, without importing torch.

:mod:`securefedrec.config` and the CLI validate ``--model`` against these;
:data:`securefedrec.models.registry.MODELS` registers the same names
(tests/core/test_models.py keeps them equal).
"""

from __future__ import annotations

__all__ = ["MODEL_NAMES"]

MODEL_NAMES = ("mf",)
"""``--model``: mf = explicit biased matrix factorization."""

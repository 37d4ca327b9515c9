"""Recommendation models: each a global part (aggregated) and a local part (never leaves the device).

- :mod:`~securefedrec.models.base`: the :class:`~securefedrec.models.base.Model`
  interface and the per-user rating batches it trains on;
- :mod:`~securefedrec.models.mf`: explicit biased matrix factorization (``--model mf``);
- :mod:`~securefedrec.models.implicit`: local training of implicit-feedback models (sampled
  negatives, BCE or BPR); :mod:`~securefedrec.models.implicit_mf` (``--model implicit-mf``) and
  :mod:`~securefedrec.models.ncf` (NeuMF, ``--model ncf``) build on it;
- :mod:`~securefedrec.models.pool`: clients and the batched client pool that drive a model;
- :mod:`~securefedrec.models.registry`: ``--model NAME`` -> model class;
  :mod:`~securefedrec.models.names` holds the names without torch (for config and the CLI).

This package's ``__init__`` imports nothing, so ``securefedrec.models.names`` stays light.
"""

__all__: list[str] = []

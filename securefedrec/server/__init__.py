"""The server side of the simulator.

- :mod:`~securefedrec.server.simulation`: :class:`~securefedrec.server.simulation.Simulation`
  (sampling, local training, aggregation, the server step, evaluation) and
  :func:`~securefedrec.server.simulation.run_experiment`;
- :mod:`~securefedrec.server.optimizers`: server optimizers (FedAvg, FedAvgM, FedAdam,
  FedYogi) that turn the aggregated sum into the next global vector;
- :mod:`~securefedrec.server.checkpoint`: checkpoints and the round snapshot.

This package's ``__init__`` imports nothing, so the config can read the optimizer
names from :mod:`securefedrec.server.optimizers` without torch.
"""

__all__: list[str] = []

"""The Flower ServerApp: federated MF with our secure aggregation over the deployment engine.

``transport = "securefedrec"`` (default) drives :class:`~protocols.secagg.SecAggServer`
stage by stage (:class:`~securefedrec.flower.rounds.run.FederatedRun`);
``transport = "flower-secaggplus"`` runs Flower's own ``SecAggPlusWorkflow``
instead, for comparison.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from securefedrec.flower.rounds import FederatedRun
from securefedrec.flower.settings import Transport, experiment_config
from securefedrec.flower.transport import GridLink

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured number of rounds on the connected SuperNodes."""
    logging.getLogger("securefedrec.flower").setLevel(logging.INFO)
    if not logging.getLogger("securefedrec.flower").handlers:
        logging.getLogger("securefedrec.flower").addHandler(logging.StreamHandler())
    config, settings = experiment_config(context.run_config)
    if settings.transport is Transport.FLOWER_SECAGGPLUS:
        from securefedrec.flower.flower_secagg import run_flower_secaggplus

        run_flower_secaggplus(grid, context, config, settings)
        return
    FederatedRun(config, settings, GridLink(grid)).run()

"""The server's side of a deployment: one round driver per protocol, and the federated loop.

- :mod:`~securefedrec.flower.rounds.exchange`: one round's stage exchanges (:class:`RoundOutcome`);
- :mod:`~securefedrec.flower.rounds.secagg`: :func:`secagg_round` (SecAgg / SecAgg+);
- :mod:`~securefedrec.flower.rounds.submodel`: :func:`submodel_round` (submodel SecAgg);
- :mod:`~securefedrec.flower.rounds.paillier`: :func:`paillier_round` (packed Paillier);
- :mod:`~securefedrec.flower.rounds.run`: :class:`FederatedRun` (sample, broadcast, secure
  round, server optimizer, DP accounting) and :func:`write_result`.
"""

from securefedrec.flower.rounds.exchange import RoundOutcome
from securefedrec.flower.rounds.paillier import paillier_round
from securefedrec.flower.rounds.run import FederatedRun, write_result
from securefedrec.flower.rounds.secagg import secagg_round
from securefedrec.flower.rounds.submodel import submodel_round

__all__ = ["FederatedRun", "RoundOutcome", "paillier_round", "secagg_round", "submodel_round", "write_result"]

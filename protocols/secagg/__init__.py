"""SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020): one implementation.

Start with :class:`SecAggAggregator` (complete graph, or ``neighbors=k`` for
SecAgg+) or :class:`SecAggPlusAggregator` (degree chosen from n). The
sans-IO :class:`SecAggClient` and :class:`SecAggServer` are what a transport
(Flower, a simulator, a benchmark) drives.
"""

from protocols.secagg.aggregator import SecAggAggregator, SecAggPlusAggregator
from protocols.secagg.client import ClientPolicy, PolicyRefusal, SecAggClient
from protocols.secagg.graph import (
    CORRUPTION_RATE,
    choose_degree,
    corrupt_holders,
    degree_is_secure,
    effective_degree,
    graph_seed,
    harary_neighbors,
    share_threshold,
)
from protocols.secagg.server import SecAggServer, ServerResult

__all__ = [
    "CORRUPTION_RATE",
    "ClientPolicy",
    "PolicyRefusal",
    "SecAggAggregator",
    "SecAggClient",
    "SecAggPlusAggregator",
    "SecAggServer",
    "ServerResult",
    "choose_degree",
    "corrupt_holders",
    "degree_is_secure",
    "effective_degree",
    "graph_seed",
    "harary_neighbors",
    "share_threshold",
]

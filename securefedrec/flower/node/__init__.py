"""The SuperNode side: the clients a node hosts, one protocol stage per Flower message.

- :mod:`~securefedrec.flower.node.runtime`: :class:`NodeRuntime`, the entry point (a round's
  first message: validate, train, privatize, compress; later stages: the protocol session);
- :mod:`~securefedrec.flower.node.secagg`, :mod:`~securefedrec.flower.node.paillier`: one
  session per protocol, the client replayed from its transcript before each stage;
- :mod:`~securefedrec.flower.node.checks`: the bounds the node puts on the server's round
  parameters (:func:`check_setup`, :func:`own_threshold`, :func:`node_policy`);
- :mod:`~securefedrec.flower.node.state`: what the node keeps between messages, and the
  client's randomness (:class:`KeyStream`, :func:`rounding_rng`);
- :mod:`~securefedrec.flower.node.identity`: signing keys and the PKI (:class:`Identity`);
- :mod:`~securefedrec.flower.node.silos`: ``dp = "record"``, each silo's DP-SGD state.

Which clients a node hosts comes from its node config: ``partition-id`` and
``num-partitions`` (Flower's convention, :func:`~securefedrec.flower.settings.partition_of`);
the node hosts every client ``c`` with ``c % num-partitions == partition-id`` -- one client
(a device, or a silo of users with ``silos``) when ``num-partitions`` equals the number of
clients.
"""

from securefedrec.flower.node.checks import check_setup, node_policy, own_threshold
from securefedrec.flower.node.identity import Identity, load_identity
from securefedrec.flower.node.runtime import NodeRuntime, train_clients
from securefedrec.flower.node.state import KeyStream, paillier_rounding_rng, rounding_rng

__all__ = ["Identity", "KeyStream", "NodeRuntime", "check_setup", "load_identity", "node_policy",
           "own_threshold", "paillier_rounding_rng", "rounding_rng", "train_clients"]

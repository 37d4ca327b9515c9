"""Packed Paillier secure aggregation (needs ``pip install securefedrec[paillier]``: phe, gmpy2).

Start with :class:`PaillierAggregator` (``malicious=True`` for the malicious-server
model). The sans-IO parties are in :mod:`.client` and :mod:`.server`, their wire
messages in :mod:`.messages`. Lower layers: :mod:`.packing` (slot layout), :mod:`.pool` (precomputed
randomness), :mod:`.keys` (key generation and distribution) and the hazmat
:mod:`.raw` (raw Paillier on gmpy2 integers).
"""

from protocols.paillier.aggregator import (
    PaillierAggregator,
    PaillierClient,
    PaillierServer,
    consistency_threshold,
)
from protocols.paillier.keys import DEFAULT_KEY_BITS, generate_keypair
from protocols.paillier.packing import SlotLayout
from protocols.paillier.pool import RandomnessPool, fill_pools
from protocols.paillier.raw import PrivateKey, PublicKey

__all__ = [
    "DEFAULT_KEY_BITS",
    "PaillierAggregator",
    "PaillierClient",
    "PaillierServer",
    "PrivateKey",
    "PublicKey",
    "RandomnessPool",
    "SlotLayout",
    "consistency_threshold",
    "fill_pools",
    "generate_keypair",
]

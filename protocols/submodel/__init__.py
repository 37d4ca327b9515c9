"""Submodel secure aggregation: each client sends only the rows of its (randomized) index set.

A model's global vector is cut into rows (one per item: its factors and bias) and
shared coordinates (:class:`~protocols.submodel.rows.RowLayout`). In a submodel
round (Niu et al., MobiCom 2020) client u

1. draws its reported row set S_u from the rows it touched by randomized response
   (:func:`~protocols.submodel.rows.randomized_response`, its own ``item_epsilon``)
   and sends it (``RowRequest``);
2. receives SecAgg's setup and the table of every requester's set, downloads the
   rows of S_u only, and masks a vector of ``|shared| + |S_u| * width`` values:
   its self mask over all of them, and for every peer v that shared keys a
   pairwise mask over the shared coordinates and the rows of S_u cap S_v,
   expanded in the same order by u and v (so it cancels coordinate by coordinate);
3. runs SecAgg on the complete graph (Bonawitz et al., CCS 2017), dropouts included.

The server scatters each masked vector onto its client's coordinates of the
length-L ring sum and removes the survivors' self masks and the dropped clients'
pairwise masks there: the sum is the exact ring sum over every coordinate of the
union of the reported sets (and the shared coordinates).

Security argument (what the server learns, and why):

* The index set. The server learns S_u, which is eps-LDP per row: each row's
  membership passes through symmetric randomized response (``item_epsilon`` in
  the report). A true row dropped by the response is neither downloaded nor
  sent; a false one is downloaded and sent as zeros.
* The values. A coordinate j is masked by u's self mask b_u and by one pairwise
  mask per other holder of j. The server removes b_u only for survivors, and a
  pairwise mask (u, v) only when v dropped (from v's reconstructed key). So on j
  it learns exactly the sum over the *surviving holders* of j -- a sum over one
  client if j is held by u alone. Two rules keep every released coordinate a sum
  over at least ``min_holders`` (>= 2) clients, each enforced by every client
  from the table and its own policy, never from the server's word:

  - at masking, a row that fewer than ``min_holders`` of the clients that shared
    keys hold is *thin*: its holders send zeros there (their update on it is
    lost this round; nothing is revealed);
  - at unmasking, a client refuses (terminally) to release any self-mask share
    when some row that was not thin is left with fewer than ``min_holders`` (but
    more than zero) surviving holders; without b_u the server learns nothing of
    u's vector. An honest server checks the same rule first and aborts.

  The shared coordinates are held by every client, so they are a sum over all
  survivors, as in dense SecAgg (the release threshold bounds how few).
* Against a malicious server, the consistency signatures bind U3 and the SHA-256
  digest of the row table (each client also checks that the table carries its
  own set), so the clients whose shares unmask a sum all saw the same table.
  What no client can check is whether another client's reported set is genuine:
  a server that adds Sybil clients holding row j lowers the number of *honest*
  holders behind a released coordinate, exactly as Sybils lower the number of
  honest inputs behind a dense SecAgg sum; the floor counts clients, not honest
  ones (the same assumption as SecAgg's threshold).
* The graph is complete: on a sparse (SecAgg+) graph a holder of j may have no
  neighbour that also holds j, and its value there would be masked by b_u alone.
  Every client refuses a setup whose degree is below n - 1.

Costs: client u uploads ``ring_bits * (|shared| + |S_u| * width)`` bits of masked
values, its set (4 bytes a row) and SecAgg's keys and n - 1 share ciphertexts;
it downloads the table of every requester's set (4 bytes a row), which dominates
its download for large n. ``E|S_u| = m p + (R - m)(1 - p)`` for m true rows out of
R and ``p = e^eps / (1 + e^eps)``.
"""

from protocols.submodel.aggregator import SubmodelAggregator, SubmodelInput, SubmodelResult
from protocols.submodel.client import SubmodelClient, SubmodelPolicy
from protocols.submodel.messages import RowRequest, SubmodelSetup, table_digest
from protocols.submodel.rows import RowLayout, keep_probability, randomized_response
from protocols.submodel.server import SubmodelServer

__all__ = [
    "RowLayout",
    "RowRequest",
    "SubmodelAggregator",
    "SubmodelClient",
    "SubmodelInput",
    "SubmodelPolicy",
    "SubmodelResult",
    "SubmodelServer",
    "SubmodelSetup",
    "keep_probability",
    "randomized_response",
    "table_digest",
]

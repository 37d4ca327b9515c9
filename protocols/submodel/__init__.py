"""Submodel secure aggregation: each client sends only the rows of its (randomized) index set.

A model's global vector is cut into rows (one per item: its factors and bias) and
shared coordinates (:class:`~protocols.submodel.rows.RowLayout`). In a submodel
round (Niu et al., MobiCom 2020) client u

1. draws its reported row set S_u from the rows it touched by randomized response
   (:func:`~protocols.submodel.rows.randomized_response`, its own ``item_epsilon``)
   and sends it (``RowRequest``);
2. receives SecAgg's setup and the table of every requester's set, downloads the
   rows of S_u only, and advertises two X25519 keys (c for share encryption, s for masks);
3. receives *every* advertisement and Shamir-shares its mask key s_sk and self-mask seed
   b_u among its k neighbours on SecAgg+'s graph (Bell et al., CCS 2020: a Harary graph
   over a permutation from the public :func:`~protocols.secagg.graph.graph_seed`), with
   SecAgg+'s threshold t' -- k and t' each client derives or bounds from its OWN
   :class:`~protocols.secagg.ClientPolicy` (Bell et al.'s degree bound for its corruption
   rate, or a fixed floor) and refuses a weaker setup;
4. receives the shares its neighbours dealt it and U2, the clients that shared keys,
   and masks a vector of ``|shared| + |S_u| * width`` values: its self mask over all of
   them and, for every v in U2, a pairwise mask over the shared coordinates and the rows
   of S_u cap S_v, expanded in the same order by u and v -- the complete graph
   restricted to the intersections, whatever k is. In the malicious model it signs U2.

The server scatters each masked vector onto its client's coordinates of the length-L
ring sum, reconstructs b_u of every survivor and s_sk of every client of U2 that dropped
from t' neighbours' shares, and removes the self masks and the dropped clients' masks
with *every* survivor (s_sk gives the server all of a dropped client's pairwise seeds):
the sum is the exact ring sum over every coordinate of the union of the reported sets
(and the shared coordinates). A neighbourhood left with fewer than t' responders aborts.

Security argument (what the server learns, and why):

* The index set. The server learns S_u, which is eps-LDP per row: each row's
  membership passes through symmetric randomized response (``item_epsilon`` in
  the report). A true row dropped by the response is neither downloaded nor
  sent; a false one is downloaded and sent as zeros.
* The two secrets. The server unmasks y_u only with both b_u (u survived) and the
  pairwise seeds of u (each from s_sk of u or of the peer). SecAgg+'s rule holds
  unchanged: shares of b_u and s_sk go to u's neighbours only, and an honest neighbour
  never reveals both the self-mask share and the key share of the same peer (asked
  for both, it refuses, terminally). In the malicious model it answers only after t'
  of its neighbours signed the same U3 (and the same table and U2), and t' is a strict
  majority of the neighbourhood, so two groups shown different survivor sets always
  share an honest client: the server never collects t' shares of both secrets of one
  client. The graph comes from the public seed, so the server cannot place a victim
  among the clients it controls; Bell et al.'s bound (each client's
  ``corruption_rate``) keeps fewer than t' of them in every neighbourhood w.h.p.
* The pairwise masks of a survivor u. Its coordinate j is masked by b_u and by one
  pairwise mask per client of U2 that holds j. The server removes b_u (u survived)
  and the masks with dropped clients, so on j it learns the sum over the *surviving
  holders* of j. Three rules keep that a sum over at least ``min_holders`` (>= 2)
  clients, each enforced by every client from its own view:

  - at masking, a row that fewer than ``min_holders`` clients of U2 hold is *thin*:
    its holders send zeros there (their update on it is lost this round);
  - at unmasking, a client refuses (terminally) to release any self-mask share when
    some row that was not thin is left with fewer than ``min_holders`` (but more than
    zero) survivors in U3; an honest server checks the same rule first and aborts;
  - U2 is the same for u and for the neighbours who release b_u: in the malicious
    model u signs the U2 it masked against, and each neighbour checks that signature
    against its own U2 (and U3 within U2) before releasing b_u. Otherwise a server
    that hid some holders of j from u's U2, then called u's other peers on j dropped,
    would learn u's value on j from b_u and their keys.

  The shared coordinates are held by every client, so they are a sum over all
  survivors, as in dense SecAgg (the release threshold bounds how few).
* The row table. The consistency signatures bind U3, the SHA-256 digest of the row
  table and of U2 (each client also checks that the table carries its own set), so
  the clients whose shares unmask a sum all saw the same sets. What no client can
  check is whether another client's reported set is genuine: Sybil clients holding
  row j lower the number of *honest* holders behind a released coordinate, exactly
  as Sybils lower the number of honest inputs behind a dense SecAgg sum; the floor
  counts clients, not honest ones (the same assumption as SecAgg's threshold).

Costs: client u uploads ``ring_bits * (|shared| + |S_u| * width)`` bits of masked
values, its set (4 bytes a row), SecAgg's keys, k share ciphertexts and (malicious) a
signature; it downloads every advertisement and the table of every requester's set
(4 bytes a row), which dominates its download for large n. It agrees an X25519 key with
every peer whose set meets its own (or every peer, when there are shared coordinates):
n - 1 agreements, against k for the shares. ``E|S_u| = m p + (R - m)(1 - p)`` for m true
rows out of R and ``p = e^eps / (1 + e^eps)``.
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

"""The submodel SecAgg client: a SecAgg client whose vector covers only its reported rows.

Stages (bytes in, bytes out), SecAgg's with one stage before them::

    (nothing)      -> request()          -> RowRequest   (the randomized-response row set)
    SubmodelSetup  -> advertise()        -> Advertisement
    broadcast      -> share_keys()       -> SharesOut    (every client's keys in; shares to the k neighbours)
    shares in, U2  -> masked_input()     -> SubmodelMasked (shared coordinates + reported rows only;
                                                          signed U2 in the malicious model)
    U3             -> consistency()      -> ConsistencySignature (malicious model; binds table and U2)
    unmask req.    -> unmask()           -> UnmaskResponse (refused if a row would be exposed)

See :mod:`protocols.submodel` for the masking and the security argument. Every
failure is terminal, as for :class:`~protocols.secagg.client.SecAggClient`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols.base import Stage
from protocols.encoding import FixedPoint
from protocols.errors import ConfigError, ProtocolError, StageError
from protocols.prg import expand, keystream, word_bytes
from protocols.secagg import _crypto
from protocols.secagg.client import ClientPolicy, SecAggClient
from protocols.secagg.messages import (
    AdvertiseBroadcast,
    Advertisement,
    Setup,
    SharesIn,
    UnmaskRequest,
    encode_ids,
)
from protocols.submodel.messages import (
    RowRequest,
    SubmodelMasked,
    SubmodelSetup,
    SubmodelSharesIn,
    SubmodelUnmaskRequest,
    ids_digest,
    mask_view_payload,
    raw_table_digest,
    table_entries,
    table_flat,
    table_subset,
)
from protocols.submodel.rows import RowLayout, keep_probability, randomized_response

__all__ = ["SubmodelClient", "SubmodelPolicy"]


@dataclass(frozen=True, kw_only=True)
class SubmodelPolicy:
    """What a submodel client decides itself, never on the server's word.

    Attributes:
        item_epsilon: the epsilon of the randomized response over its row set (item-level LDP).
        min_holders: the fewest surviving clients that must hold a row before this client
            lets any sum that covers the row be unmasked (>= 2: a row held by one client
            alone would be that client's value).
    """

    item_epsilon: float
    min_holders: int = 2

    def __post_init__(self) -> None:
        keep_probability(self.item_epsilon)  # raises ConfigError on a bad epsilon
        if self.min_holders < 2:
            raise ConfigError(f"SubmodelPolicy.min_holders must be >= 2, got {self.min_holders}")


class _TableIndex:
    """A row table as flat arrays (built once per round): every set's rows, one set after another.

    Args:
        ids: the clients, ascending.
        counts: the size of each one's set.
        rows: the sets' rows, one set after another (each ascending).
        num_rows: the catalogue's rows.
    """

    def __init__(self, ids: np.ndarray, counts: np.ndarray, rows: np.ndarray, num_rows: int) -> None:
        self.ids, self.rows, self.num_rows = ids, rows, num_rows
        self.stop = np.cumsum(counts)
        self.start = self.stop - counts
        self._all = np.bincount(rows, minlength=num_rows).astype(np.int64)

    @classmethod
    def empty(cls, num_rows: int) -> _TableIndex:
        """No sets."""
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, none, num_rows)

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        """The rows of the sets at ``positions`` (indices into :attr:`ids`), one after another."""
        parts = [self.rows[self.start[i] : self.stop[i]] for i in positions.tolist()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def holders(self, clients: Iterable[int]) -> np.ndarray:
        """How many of ``clients`` hold each row (as :func:`holder_counts`): all holders less the others."""
        member = np.isin(self.ids, np.fromiter(clients, dtype=np.int64))
        if np.count_nonzero(member) * 2 < member.size:
            return np.bincount(self.rows_of(np.flatnonzero(member)), minlength=self.num_rows).astype(np.int64)
        others = np.bincount(self.rows_of(np.flatnonzero(~member)), minlength=self.num_rows)
        out: np.ndarray = self._all - others
        return out


def holder_counts(table: Mapping[int, np.ndarray], clients: Iterable[int], num_rows: int) -> np.ndarray:
    """How many of ``clients`` (an iterable of ids present in ``table``) hold each row."""
    sets = [table[c] for c in clients]
    if not sets:
        return np.zeros(num_rows, dtype=np.int64)
    return np.bincount(np.concatenate(sets), minlength=num_rows).astype(np.int64)


class SubmodelClient(SecAggClient):
    """One client of one submodel SecAgg round.

    Args:
        client_id: this client's id.
        layout: the public row layout of the global vector.
        rows: the rows this client really touched (unique ids).
        values: its update on those rows, ``(len(rows), layout.width)`` floats (same order as ``rows``).
        shared: its update on the shared coordinates, ``(layout.shared.size,)`` floats.
        submodel: its :class:`SubmodelPolicy` (item epsilon, holder floor).
        malicious, identity_key, identity_keys, round_id, randbytes, rng, policy: as for
            :class:`~protocols.secagg.client.SecAggClient`; ``randbytes`` also seeds the
            randomized response, whose privacy rests on the server not predicting it. The
            ``policy`` bounds the sharing graph's degree and the thresholds as for SecAgg+
            (default: Bell et al.'s bound for 5 % corrupted clients); the masks use every
            peer in U2 whatever the degree.
    """

    def __init__(
        self,
        client_id: int,
        layout: RowLayout,
        rows: np.ndarray,
        values: np.ndarray,
        shared: np.ndarray,
        *,
        submodel: SubmodelPolicy,
        malicious: bool = True,
        identity_key: Ed25519PrivateKey | None = None,
        identity_keys: Mapping[int, bytes] | None = None,
        round_id: int | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        rng: np.random.Generator | None = None,
        policy: ClientPolicy | None = None,
    ) -> None:
        super().__init__(client_id, np.zeros(0), malicious=malicious, identity_key=identity_key,
                         identity_keys=identity_keys, round_id=round_id, randbytes=randbytes, rng=rng,
                         policy=policy)
        true_rows = np.asarray(rows, dtype=np.int64)
        vals = np.asarray(values, dtype=np.float64)
        shared_vals = np.asarray(shared, dtype=np.float64)
        if vals.shape != (true_rows.size, layout.width) or shared_vals.shape != layout.shared.shape:
            raise ConfigError(f"client {client_id}: values {vals.shape} / shared {shared_vals.shape} do not "
                              f"match {true_rows.size} rows of width {layout.width} and "
                              f"{layout.shared.size} shared coordinates")
        if not (np.all(np.isfinite(vals)) and np.all(np.isfinite(shared_vals))):
            raise ConfigError(f"client {client_id}: a non-finite value")
        order = np.argsort(true_rows, kind="stable")
        self._layout = layout
        self._true_rows, self._true_values, self._shared = true_rows[order], vals[order], shared_vals
        self._submodel = submodel
        self._requested = False
        self._reported = np.zeros(0, dtype=np.int64)
        self._entries: dict[int, tuple[int, int, int]] = {}
        self._u2_counts = np.zeros(0, dtype=np.int64)
        self._u2: tuple[int, ...] = ()
        self._index = _TableIndex.empty(layout.num_rows)
        self._table_ids: frozenset[int] = frozenset()
        self._table_raw = b""
        self._table_digest = b""

    @property
    def reported(self) -> np.ndarray:
        """The reported row set (empty before :meth:`request`)."""
        return self._reported

    def request(self, message: bytes = b"") -> bytes:
        """Draw the reported row set by randomized response and send it; the first call of a round.

        ``message`` is ignored (the request is the client's first word).
        """
        if self._requested or self._expect is not Stage.ADVERTISE:
            self._expect = None
            raise StageError(f"client {self.client_id}: request called twice or after the round started")
        self._requested = True
        try:
            seed = int.from_bytes(self._randbytes(32), "big")
            source = np.random.Generator(np.random.PCG64(seed))
            reported = randomized_response(self._true_rows, self._layout.num_rows,
                                           self._submodel.item_epsilon, source)
            vector = np.zeros(self._layout.client_length(reported.size), dtype=np.float64)
            s, w = self._layout.shared.size, self._layout.width
            vector[:s] = self._shared
            at = np.searchsorted(reported, self._true_rows)
            kept = (at < reported.size) & (reported[np.minimum(at, reported.size - 1)] == self._true_rows)
            body = vector[s:].reshape(reported.size, w)
            body[at[kept]] = self._true_values[kept]  # true rows that RR dropped are not sent this round
            self._reported, self._vector = reported, vector
            return RowRequest(self.client_id, self._layout.num_rows, reported).encode()
        except (ProtocolError, ConfigError):
            self._expect = None
            raise
        except Exception as exc:
            self._expect = None
            raise self._fail("request", f"{type(exc).__name__} inside the stage; refused") from exc

    def advertise(self, setup: bytes) -> bytes:
        """Stage ADVERTISE: check the row table and SecAgg's setup, return the advertisement."""
        if not self._requested:
            self._expect = None
            raise StageError(f"client {self.client_id}: advertise called before request")
        return self._run(Stage.ADVERTISE, self._advertise_submodel, setup)

    def _advertise_submodel(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup_bytes, raw = SubmodelSetup.split(message)
        entries = table_entries(raw)  # the sets stay encoded (compact) until masking decodes them
        if self.client_id not in entries or not np.array_equal(
                table_subset(raw, [self.client_id], entries)[self.client_id], self._reported):
            raise self._fail("setup", "the row table does not hold this client's reported set")
        reply, following = self._advertise(setup_bytes)
        setup = self._setup
        if setup is None:
            raise StageError("client state incomplete")
        unknown = set(entries) - set(setup.client_ids)
        if unknown:
            raise self._fail("setup", f"the row table names clients outside the round: {sorted(unknown)[:5]}")
        self._entries = entries
        self._table_ids = frozenset(entries)
        self._table_raw = raw
        self._table_digest = raw_table_digest(raw)
        return reply, following

    def _share_keys(self, message: bytes) -> tuple[bytes, Stage | None]:
        """Check every advertiser's keys (masks use them all); deal shares to the graph neighbours only."""
        setup, c_sk, s_sk = self._setup, self._c_sk, self._s_sk
        if setup is None or c_sk is None or s_sk is None:
            raise StageError("client state incomplete")
        broadcast = AdvertiseBroadcast.decode(message)
        ads: dict[int, Advertisement] = {}
        seen_keys = set(self._own_keys)
        own = False
        for ad in broadcast.advertisements:
            if ad.client_id == self.client_id:  # the broadcast is the same for everyone: its own entry
                if own or frozenset((ad.c_pk, ad.s_pk)) != self._own_keys:
                    raise self._fail("share keys", "the broadcast carries other keys for this client")
                own = True
                continue
            if ad.client_id not in self._x or ad.client_id not in self._table_ids:
                raise self._fail("share keys", f"advertisement of {ad.client_id}, who requested no rows")
            self._accept_advertisement(setup, ad, seen_keys)
            ads[ad.client_id] = ad
        self._ads = ads
        neighbours = {c: ad for c, ad in ads.items() if c in self._neighbors}
        return self._deal_shares(setup, c_sk, s_sk, neighbours), Stage.MASKED_INPUT

    def _masked_input(self, message: bytes) -> tuple[bytes, Stage | None]:
        """Check U2 against the shares received, mask against every peer in U2, sign U2 (malicious)."""
        setup = self._setup
        if setup is None:
            raise StageError("client state incomplete")
        sub = SubmodelSharesIn.decode(message)
        u2 = set(sub.u2)
        if self.client_id not in u2:
            raise self._fail("masked input", "U2 does not hold this client")
        if not u2 <= set(self._ads) | {self.client_id}:
            raise self._fail("masked input", f"U2 names clients that did not advertise: "
                             f"{sorted(u2 - set(self._ads) - {self.client_id})[:5]}")
        if len(u2) < setup.threshold:
            raise self._fail("masked input", f"only {len(u2)} clients in U2, threshold is {setup.threshold}")
        senders = {sender for sender, _ in SharesIn.decode(sub.shares_in).shares}
        if senders != (self._neighbors & u2):  # a neighbour in U2 dealt this client a share, and only those
            raise self._fail("masked input", "U2 disagrees with the neighbours whose shares arrived")
        self._u2 = sub.u2
        ids, counts, rows = table_flat(self._table_raw, self._entries, self._entries)
        if rows.size and rows[np.cumsum(counts)[counts > 0] - 1].max() >= self._layout.num_rows:
            raise self._fail("masked input", f"the row table names a row beyond {self._layout.num_rows}")
        self._index = _TableIndex(ids, counts, rows, self._layout.num_rows)
        del rows
        reply, following = super()._masked_input(sub.shares_in)
        # the decoded table is not needed again (unmask re-reads the few sets it needs): free it
        self._index = _TableIndex.empty(self._layout.num_rows)
        self._u2_counts = self._u2_counts.astype(np.int32)
        signature = b""
        if self._malicious:
            if self._identity is None:
                raise StageError("client state incomplete")
            payload = mask_view_payload(setup.round_id, self.client_id, sub.u2)
            signature = _crypto.sign(self._identity, payload)
        return SubmodelMasked(signature, reply).encode(), following

    def _masked_vector(self, setup: Setup, s_sk: X25519PrivateKey, peers: list[int]) -> np.ndarray:
        """Mask the shared coordinates and reported rows: self mask on all, pairwise on intersections.

        ``peers`` (the neighbours whose shares arrived) is ignored: the pairwise masks go to
        every other client of U2 (checked against ``peers`` by :meth:`_masked_input`). The
        intersections, positions and signs of all peers are computed at once; only the key
        agreement and the keystream are per peer. The mask with peer v is laid out as
        :meth:`~protocols.submodel.rows.RowLayout.positions` says: the shared coordinates, then
        the rows of S_u cap S_v in ascending order.
        """
        layout, own, h, index = self._layout, self._reported, self._submodel.min_holders, self._index
        counts = index.holders(self._u2)
        self._u2_counts = counts
        vector = self._vector.copy()
        s, w = layout.shared.size, layout.width
        thin = np.flatnonzero(counts[own] < h)  # rows too few masking peers hold: never sent, zeroed
        if thin.size:
            vector[s:].reshape(own.size, w)[thin] = 0.0
        fp = FixedPoint(clip_range=setup.clip_range, value_bits=setup.value_bits, ring_bits=setup.ring_bits,
                        wrap=setup.wrap)
        acc = fp.quantize(vector, self._rng).astype(np.uint64)
        acc += expand(self._self_seed, acc.size, setup.ring_bits)
        is_peer = np.isin(index.ids, self._u2) & (index.ids != self.client_id)
        where = np.full(layout.num_rows, -1, dtype=np.int64)
        where[own] = np.arange(own.size)
        at = where[index.rows]  # each table entry's place in this client's vector (-1: not its row)
        for i in np.flatnonzero(~is_peer).tolist():  # itself, and the clients outside U2 (few)
            at[index.start[i] : index.stop[i]] = -1
        hits = np.flatnonzero(at >= 0)
        peer_of = np.searchsorted(index.stop, hits, side="right")  # grouped by peer, ascending within each
        common_at = at[hits]
        per = np.bincount(peer_of, minlength=index.ids.size)
        lengths = s + w * per
        streams = np.flatnonzero(is_peer & (lengths > 0))  # nothing in common and no shared part: no mask
        wb = word_bytes(setup.ring_bits)
        chunks = []
        for i in streams.tolist():
            peer = int(index.ids[i])
            seed = _crypto.mask_seed(s_sk, self._ads[peer].s_pk, setup.round_id, self.client_id, peer)
            chunks.append(keystream(seed, wb * int(lengths[i])))
        words = np.frombuffer(b"".join(chunks), dtype=f"<u{wb}").astype(np.uint64)
        negative = np.repeat(index.ids[streams] < self.client_id, lengths[streams])  # the larger id subtracts
        words[negative] = np.uint64(0) - words[negative]
        offset = np.zeros(index.ids.size, dtype=np.int64)
        offset[streams] = np.cumsum(lengths[streams]) - lengths[streams]
        if s and streams.size:
            acc[:s] += words[offset[streams][:, None] + np.arange(s)].sum(axis=0, dtype=np.uint64)
        if common_at.size:
            rank = np.arange(common_at.size) - np.repeat(np.cumsum(per) - per, per)
            source = (offset[peer_of] + s + rank * w)[:, None] + np.arange(w)
            target = (s + common_at * w)[:, None] + np.arange(w)
            np.add.at(acc, target.ravel(), words[source.ravel()])
        acc &= np.uint64(fp.modulus_mask)
        return acc

    def _signed_view(self, survivors: tuple[int, ...]) -> bytes:
        """U3, the digest of the row table and of U2: every signer saw the same sets (malicious model)."""
        return encode_ids(survivors) + self._table_digest + ids_digest(self._u2)

    def _check_survivors(self, survivors: tuple[int, ...], stage: str) -> None:
        """As SecAgg's, and U3 within U2: every survivor masked against this client's U2."""
        super()._check_survivors(survivors, stage)
        outside = set(survivors) - set(self._u2)
        if outside:
            raise self._fail(stage, f"survivors {sorted(outside)[:5]} never shared keys")

    def _unmask(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup = self._setup
        if setup is None:
            raise StageError("client state incomplete")
        sub = SubmodelUnmaskRequest.decode(message)
        request = UnmaskRequest.decode(sub.request)
        if self._malicious:
            if sub.u3 != self._survivors:
                raise self._fail("unmask", "U3 differs from the survivor set this client signed")
        else:
            self._check_survivors(sub.u3, "unmask")
        if set(request.survivors) != set(sub.u3) & set(self._shares):
            raise self._fail("unmask", "the self-mask shares asked for are not the survivors' it holds")
        if self._malicious:
            # each survivor whose self mask this client helps remove masked against this client's U2
            signatures = dict(sub.mask_signatures)
            for peer in request.survivors:
                if peer == self.client_id:
                    continue
                signature = signatures.get(peer)
                if signature is None:
                    raise self._fail("unmask", f"no signature of survivor {peer} on the U2 it masked against")
                _crypto.verify(self._pki.get(peer, b""), signature,
                               mask_view_payload(setup.round_id, peer, self._u2),
                               f"client {self.client_id}, round {setup.round_id}, U2 signature of {peer}")
        h = self._submodel.min_holders
        gone = table_subset(self._table_raw, set(self._u2) - set(sub.u3), self._entries)  # dropped since U2
        surviving = self._u2_counts - holder_counts(gone, gone, self._layout.num_rows)
        # a row sent by its holders (held by >= h clients of U2) but left with < h survivors
        exposed = (self._u2_counts >= h) & (surviving < h) & (surviving > 0)
        if exposed.any():
            row = int(np.flatnonzero(exposed)[0])
            raise self._fail("unmask", f"row {row} would be unmasked with {int(surviving[row])} survivor(s), "
                             f"fewer than this client's floor {h}; refused")
        return super()._unmask(sub.request)

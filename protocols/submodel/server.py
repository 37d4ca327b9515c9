"""The submodel SecAgg server: SecAgg's server over per-client row sets, summing into the global vector.

Stages::

    row requests           -> receive_requests()         -> SubmodelSetup for every requester
    advertisements         -> receive_advertisements()   -> every advertisement, to every advertiser
    shares                 -> receive_shares()           -> SharesIn (from the k neighbours) and U2
    masked inputs          -> receive_masked_inputs()    (scattered into the length-L ring sum)
    signatures, unmask     -> as SecAgg+ (shares from the neighbours); the self masks and the
                              dropped clients' pairwise masks with every survivor are removed
                              on each client's own coordinates

:meth:`setup` is replaced by :meth:`receive_requests`. See :mod:`protocols.submodel`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols.base import RoundConfig, Stage, abort_if_below_threshold
from protocols.errors import IntegrityError, StageError
from protocols.prg import expand
from protocols.secagg import _crypto
from protocols.secagg.client import raw_public
from protocols.secagg.graph import CORRUPTION_RATE
from protocols.secagg.messages import AdvertiseBroadcast, MaskedInput, Setup
from protocols.secagg.server import SecAggServer, _terminal
from protocols.submodel.client import holder_counts
from protocols.submodel.messages import (
    RowRequest,
    SubmodelMasked,
    SubmodelSetup,
    SubmodelSharesIn,
    SubmodelUnmaskRequest,
)
from protocols.submodel.rows import RowLayout

__all__ = ["SubmodelServer"]


class SubmodelServer(SecAggServer):
    """The server of one submodel SecAgg round: shares on a k-regular graph, masks on U2's intersections.

    Args:
        config: the round's settings; ``config.neighbors`` (else ``neighbors``) is the degree
            of the graph the secrets are shared on (``None``: the complete graph).
        client_ids: the clients invited.
        layout: the public row layout.
        min_holders: the holder floor an honest server expects its clients to hold it to;
            a round that would break it aborts before any unmask request (the clients
            check it themselves, this only spares them a refused request).
        neighbors: the sharing graph's degree when ``config.neighbors`` is unset.
        malicious: the malicious-model variant (signed keys, consistency round).
    """

    def __init__(
        self,
        config: RoundConfig,
        client_ids: Iterable[int],
        layout: RowLayout,
        *,
        neighbors: int | None = None,
        min_holders: int = 2,
        malicious: bool = True,
        corruption_rate: float = CORRUPTION_RATE,
    ) -> None:
        super().__init__(config, client_ids, layout.length, neighbors=neighbors, malicious=malicious,
                         corruption_rate=corruption_rate)
        self.layout = layout
        self.min_holders = min_holders
        self.table: dict[int, np.ndarray] = {}
        """Every requester's reported row set (what the server learns about the sets)."""
        self._u2_counts = np.zeros(0, dtype=np.int64)
        self._mask_signatures: dict[int, bytes] = {}

    def union_rows(self) -> int:
        """How many rows the reported sets cover together (what the round's sum is exact on)."""
        union = np.zeros(self.layout.num_rows, dtype=bool)
        for rows in self.table.values():
            union[rows] = True
        return int(union.sum())

    def setup(self) -> dict[int, bytes]:
        """Not a stage of this protocol: the setups answer the row requests (:meth:`receive_requests`)."""
        raise StageError(f"server, round {self.config.round_id}: submodel rounds start with receive_requests")

    @_terminal
    def receive_requests(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """The requesters' row sets -> each requester's SecAgg setup and the table of sets."""
        if self._started:
            raise StageError(f"server, round {self.config.round_id}: requests received twice")
        self._started = True
        self._check_senders(messages, self.client_ids, Stage.ADVERTISE)
        table: dict[int, np.ndarray] = {}
        for cid in sorted(messages):
            request = RowRequest.decode(messages[cid])
            self._sender_matches(cid, request.client_id, Stage.ADVERTISE)
            if request.num_rows != self.layout.num_rows:
                raise IntegrityError(f"server, round {self.config.round_id}: client {cid} asks for "
                                     f"{request.num_rows} rows, the model has {self.layout.num_rows}")
            table[cid] = request.rows
        abort_if_below_threshold(len(table), self.config, Stage.ADVERTISE)
        self.table = table
        cfg, enc = self.config, self.encoding
        self._expect = Stage.ADVERTISE
        out = {}
        encoded = SubmodelSetup.encode_table(table)
        for c in sorted(table):
            setup = Setup(
                round_id=cfg.round_id, client_id=c, length=self.layout.client_length(table[c].size),
                ring_bits=cfg.ring_bits, value_bits=enc.value_bits, clip_range=enc.clip_range,
                threshold=cfg.threshold, share_threshold=self.share_threshold, degree=self.degree,
                malicious=self.malicious, graph_seed=self.graph_seed, client_ids=self.client_ids,
                wrap=cfg.wrap,
            ).encode()
            out[c] = SubmodelSetup.encode_parts(setup, encoded)
        return out

    @_terminal
    def receive_advertisements(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """U1: every advertisement to every advertiser (the masks use every peer's key); one encoding."""
        ads = self._take_advertisements(messages, self.table)
        broadcast = AdvertiseBroadcast(tuple(ads[v] for v in sorted(ads))).encode()
        return dict.fromkeys(sorted(ads), broadcast)

    @_terminal
    def receive_shares(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """As SecAgg+'s (shares routed to the neighbours), each with U2; counts each row's holders in U2."""
        out = super().receive_shares(messages)
        self._u2_counts = holder_counts(self.table, self._u2, self.layout.num_rows)
        u2 = tuple(sorted(self._u2))
        return {c: SubmodelSharesIn(m, u2).encode() for c, m in out.items()}

    def _sum_masked(self, messages: Mapping[int, bytes]) -> np.ndarray:
        """Scatter each masked vector onto its client's coordinates of the length-L ring sum."""
        total = np.zeros(self.layout.length, dtype=np.uint64)
        signatures = {}
        for cid, raw in messages.items():
            coords = self.layout.coordinates(self.table[cid])  # computed when needed: n of them are large
            wrapped = SubmodelMasked.decode(raw)
            if len(wrapped.signature) != (64 if self.malicious else 0):
                raise IntegrityError(f"server, round {self.config.round_id}: client {cid}'s masked input "
                                     f"carries a {len(wrapped.signature)}-byte signature on U2")
            signatures[cid] = wrapped.signature
            sender, ring_bits, values = MaskedInput.decode_words(wrapped.masked, coords.size)
            self._sender_matches(cid, sender, Stage.MASKED_INPUT)
            if ring_bits != self.config.ring_bits:
                raise IntegrityError(f"server, round {self.config.round_id}: client {cid} used another ring")
            total[coords] += values.astype(np.uint64)  # a client's coordinates are unique
        h = self.min_holders
        surviving = holder_counts(self.table, messages, self.layout.num_rows)
        exposed = (self._u2_counts >= h) & (surviving < h) & (surviving > 0)
        if exposed.any():
            row = int(np.flatnonzero(exposed)[0])
            raise self._abort(f"row {row} is left with {int(surviving[row])} of its holders, fewer than {h}",
                              len(messages))
        self._mask_signatures = signatures
        return total

    def _unmask_requests(self, asked: Sequence[int], sigs: Mapping[int, bytes]) -> dict[int, bytes]:
        """SecAgg+'s requests, each with U3 and the U2 signatures of the survivors it holds shares of."""
        inner = super()._unmask_requests(asked, sigs)
        u3 = tuple(self._u3)
        out = {}
        for c, raw in inner.items():
            wanted = self._requests[c].survivors
            mask_sigs = (tuple((v, self._mask_signatures[v]) for v in wanted if v != c)
                         if self.malicious else ())
            out[c] = SubmodelUnmaskRequest(raw, u3, mask_sigs).encode()
        return out

    def _left_masks(self, dropped: int) -> bool:
        """A client of U2 masked against every other one: a dropped one left masks if anyone survived."""
        return bool(self._u3)

    def _unmasked_sum(self, seeds: Mapping[int, bytes], keys: Mapping[int, bytes]) -> np.ndarray:
        """Remove the survivors' self masks and the dropped clients' masks on each pair's intersection."""
        bits, layout = self.config.ring_bits, self.layout
        total = self._masked_sum
        for c in self._u3:
            coords = self.layout.coordinates(self.table[c])
            total[coords] -= expand(seeds[c], coords.size, bits)
        u3 = set(self._u3)
        for dropped, raw_key in keys.items():
            s_sk = X25519PrivateKey.from_private_bytes(raw_key)
            if raw_public(s_sk) != self._ads[dropped].s_pk:
                raise IntegrityError(
                    f"server, round {self.config.round_id}: shares of client {dropped}'s mask key are wrong")
            theirs = self.table[dropped]
            for peer in sorted(u3):  # every survivor (in U2) masked against the dropped client
                own = self.table[peer]
                common = np.intersect1d(own, theirs, assume_unique=True)
                coords = layout.coordinates(own)[layout.positions(own, common)]
                if not coords.size:
                    continue
                seed = _crypto.mask_seed(s_sk, self._ads[peer].s_pk, self.config.round_id, dropped, peer)
                mask = expand(seed, coords.size, bits)
                if peer < dropped:  # the peer added this mask
                    total[coords] -= mask
                else:
                    total[coords] += mask
        return total & np.uint64(self.encoding.modulus_mask)

"""The SecAgg / SecAgg+ server as a sans-IO state machine.

One method per stage; each takes ``client id -> message`` from the clients that
answered (the others have dropped) and returns ``client id -> message`` for
the next stage::

    setup()                    -> Setup for every client
    advertisements             -> receive_advertisements()  -> AdvertiseBroadcast
    share bundles              -> receive_shares()          -> SharesIn
    masked inputs              -> receive_masked_inputs()   -> ConsistencyRequest (malicious)
                                                              or UnmaskRequest (semi-honest)
    consistency signatures     -> receive_signatures()      -> UnmaskRequest   (malicious only)
    unmask responses           -> receive_unmask()          -> (ring sum, survivors)

When fewer than ``threshold`` clients answer a stage, or a secret cannot be
reconstructed from the shares that arrived, the server raises
:class:`~protocols.errors.AggregationAborted` and has learnt nothing but the
masked inputs. Calling a stage out of order raises
:class:`~protocols.errors.StageError`; a message whose sender field disagrees
with the transport's client id raises :class:`~protocols.errors.IntegrityError`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols import shamir
from protocols.base import RoundConfig, Stage, abort_if_below_threshold
from protocols.encoding import FixedPoint
from protocols.errors import AggregationAborted, ConfigError, IntegrityError, ProtocolError, StageError
from protocols.prg import MaskExpander
from protocols.secagg import _crypto
from protocols.secagg.client import raw_public
from protocols.secagg.graph import (
    CORRUPTION_RATE,
    effective_degree,
    graph_seed,
    harary_neighbors,
    share_threshold,
)
from protocols.secagg.messages import (
    MAX_ID,
    AdvertiseBroadcast,
    Advertisement,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    Setup,
    SharesIn,
    SharesOut,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["SecAggServer", "ServerResult"]


@dataclass(frozen=True)
class ServerResult:
    """What the server learns: the sum of the survivors' encoded inputs."""

    ring_sum: np.ndarray
    """Sum in Z_{2^b} (uint64)."""
    survivors: frozenset[int]
    """U3: clients whose input is in the sum."""
    encoding: FixedPoint
    """Decode ``ring_sum`` with ``encoding.decode``."""

    def decode(self) -> np.ndarray:
        """The float64 sum."""
        return self.encoding.decode(self.ring_sum)


_R = TypeVar("_R")
_S = TypeVar("_S", bound="SecAggServer")


def _terminal(
    method: Callable[[_S, Mapping[int, bytes]], _R],
) -> Callable[[_S, Mapping[int, bytes]], _R]:
    """Make a stage of the server terminal on failure (h11 style).

    A stage called out of order raises ``StageError`` and changes nothing (the
    caller is the server's own driver); any other failure inside the stage ends
    the round for this server object -- every further stage raises ``StageError``
    -- and an exception that is not the project's own becomes ``IntegrityError``.
    """

    @functools.wraps(method)
    def run(self: _S, messages: Mapping[int, bytes]) -> _R:
        try:
            return method(self, messages)
        except StageError:  # only _enter raises it: the stage was not run, nothing changed
            raise
        except (ProtocolError, ConfigError):
            self._expect = None
            raise
        except Exception as exc:
            self._expect = None
            raise IntegrityError(
                f"server, round {self.config.round_id}, {method.__name__}: {type(exc).__name__} "
                "inside the stage; round refused"
            ) from exc

    return run


class SecAggServer:
    """The server of one SecAgg / SecAgg+ round.

    Args:
        config: the round's settings (threshold, ring bits, clipping range, neighbours).
        client_ids: the clients invited to the round.
        length: L, the vector length.
        neighbors: graph degree; ``None`` means the complete graph. ``config.neighbors``
            overrides it when set.
        malicious: run the malicious-model variant (signed keys, consistency round).
        randbytes: unused since the graph seed is derived from the round
            (:func:`~protocols.secagg.graph.graph_seed`); kept so callers need not change.
        corruption_rate: the fraction of clients the server must assume corrupted when it
            sets the malicious model's t' (:func:`~protocols.secagg.graph.share_threshold`);
            each client computes its own from its policy and refuses a lower t'.
    """

    def __init__(
        self,
        config: RoundConfig,
        client_ids: Iterable[int],
        length: int,
        *,
        neighbors: int | None = None,
        malicious: bool = True,
        randbytes: Callable[[int], bytes] = os.urandom,
        corruption_rate: float = CORRUPTION_RATE,
    ) -> None:
        ids = tuple(sorted(set(client_ids)))
        if not ids:
            raise ConfigError(f"round {config.round_id}: no clients")
        if any(not 0 <= c <= MAX_ID for c in ids):
            raise ConfigError(f"round {config.round_id}: client ids must be in [0, 2^63 - 1]")
        if config.threshold > len(ids):
            raise ConfigError(
                f"round {config.round_id}: threshold {config.threshold} exceeds the {len(ids)} clients"
            )
        self.config = config
        self.client_ids = ids
        self.length = length
        self.malicious = malicious
        n = len(ids)
        self.degree = effective_degree(n, config.neighbors if config.neighbors is not None else neighbors)
        self.share_threshold = share_threshold(config.threshold, n, self.degree, malicious, corruption_rate)
        self.encoding = FixedPoint.for_sum(n, config.clip_range, config.ring_bits, config.value_bits,
                                           wrap=config.wrap)
        self.graph_seed = graph_seed(config.round_id, ids)  # derived, so clients can check it
        self.neighbors = harary_neighbors(ids, self.degree, self.graph_seed)
        self._x = {c: i + 1 for i, c in enumerate(ids)}
        self._expect: Stage | None = None
        self._started = False
        self._ads: dict[int, Advertisement] = {}
        self._u2: set[int] = set()
        self._masked_sum = np.zeros(0, dtype=np.uint64)
        self._u3: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._requests: dict[int, UnmaskRequest] = {}

    # ---- state machine -------------------------------------------------------------
    @property
    def stage(self) -> Stage | None:
        """The stage whose client messages the server expects next (``None`` before setup / when done)."""
        return self._expect

    def _enter(self, stage: Stage) -> None:
        if self._expect is not stage:
            state = "expects no messages" if self._expect is None else f"expects {self._expect.name}"
            raise StageError(f"server, round {self.config.round_id}: {stage.name} messages, but it {state}")

    def _check_senders(self, messages: Mapping[int, bytes], allowed: Iterable[int], stage: Stage) -> None:
        extra = set(messages) - set(allowed)
        if extra:
            raise IntegrityError(
                f"server, round {self.config.round_id}, {stage.name}: messages from clients "
                f"{sorted(extra)[:5]} that were not asked"
            )

    def _sender_matches(self, cid: int, claimed: int, stage: Stage) -> None:
        if cid != claimed:
            raise IntegrityError(
                f"server, round {self.config.round_id}, {stage.name}: client {cid} sent a message "
                f"signed as {claimed}"
            )

    def _abort(self, why: str, survivors: int) -> AggregationAborted:
        return AggregationAborted(
            f"round {self.config.round_id}: {why}; round aborted, nothing revealed",
            survivors=survivors, threshold=self.config.threshold, round_id=self.config.round_id,
        )

    # ---- stages --------------------------------------------------------------------
    def setup(self) -> dict[int, bytes]:
        """The setup message for every invited client."""
        if self._started:
            raise StageError(f"server, round {self.config.round_id}: setup called twice")
        self._started = True
        self._expect = Stage.ADVERTISE
        cfg, enc = self.config, self.encoding
        return {
            c: Setup(
                round_id=cfg.round_id, client_id=c, length=self.length, ring_bits=cfg.ring_bits,
                value_bits=enc.value_bits, clip_range=enc.clip_range, threshold=cfg.threshold,
                share_threshold=self.share_threshold, degree=self.degree, malicious=self.malicious,
                graph_seed=self.graph_seed, client_ids=self.client_ids, wrap=cfg.wrap,
            ).encode()
            for c in self.client_ids
        }

    def _take_advertisements(
        self, messages: Mapping[int, bytes], invited: Iterable[int]
    ) -> dict[int, Advertisement]:
        """Stage U1's intake: senders among ``invited``, each message its sender's own, a quorum."""
        self._enter(Stage.ADVERTISE)
        self._check_senders(messages, invited, Stage.ADVERTISE)
        ads = {}
        for cid, raw in messages.items():
            ad = Advertisement.decode(raw)
            self._sender_matches(cid, ad.client_id, Stage.ADVERTISE)
            ads[cid] = ad
        self._stage_quorum(ads, Stage.ADVERTISE)
        self._ads = ads
        self._expect = Stage.SHARE_KEYS
        return ads

    @_terminal
    def receive_advertisements(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """U1: forward each advertiser the advertisements of its neighbours that advertised."""
        ads = self._take_advertisements(messages, self.client_ids)
        return {
            c: AdvertiseBroadcast(tuple(ads[v] for v in sorted(self.neighbors[c] & ads.keys()))).encode()
            for c in sorted(ads)
        }

    def _stage_quorum(self, present: Iterable[int], stage: Stage) -> None:
        alive = set(present)
        abort_if_below_threshold(len(alive), self.config, stage)
        for c in sorted(alive):
            holders = len(self.neighbors[c] & alive) + 1
            if holders < self.share_threshold:
                raise self._abort(
                    f"client {c} has {holders} share holders left at {stage.name}, "
                    f"the neighbourhood threshold is {self.share_threshold}",
                    len(alive),
                )

    @_terminal
    def receive_shares(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """U2: route every encrypted share bundle to its recipient."""
        self._enter(Stage.SHARE_KEYS)
        self._check_senders(messages, self._ads, Stage.SHARE_KEYS)
        inbox: dict[int, list[tuple[int, bytes]]] = {c: [] for c in messages}
        for cid in sorted(messages):
            bundle = SharesOut.decode(messages[cid])
            self._sender_matches(cid, bundle.client_id, Stage.SHARE_KEYS)
            for recipient, ct in bundle.shares:
                if recipient not in self.neighbors[cid] or recipient not in self._ads:
                    raise IntegrityError(
                        f"server, round {self.config.round_id}: client {cid} sent a share to {recipient}, "
                        "not an advertised neighbour"
                    )
                if recipient in inbox:  # bundles for clients that dropped are discarded
                    inbox[recipient].append((cid, ct))
        self._stage_quorum(messages, Stage.SHARE_KEYS)
        self._u2 = set(messages)
        self._expect = Stage.MASKED_INPUT
        return {c: SharesIn(tuple(items)).encode() for c, items in inbox.items()}

    @_terminal
    def receive_masked_inputs(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """U3: keep the masked vectors; ask for signatures (malicious) or unmask shares (semi-honest)."""
        self._enter(Stage.MASKED_INPUT)
        self._check_senders(messages, self._u2, Stage.MASKED_INPUT)
        total = self._sum_masked(messages)
        abort_if_below_threshold(len(messages), self.config, Stage.MASKED_INPUT)
        self._masked_sum = total
        self._u3 = tuple(sorted(messages))
        if self.malicious:
            self._expect = Stage.CONSISTENCY
            request = ConsistencyRequest(self._u3).encode()
            return dict.fromkeys(self._u3, request)
        self._expect = Stage.UNMASK
        return self._unmask_requests(self._u3, {})

    def _sum_masked(self, messages: Mapping[int, bytes]) -> np.ndarray:
        """The ring sum (word-size accumulator) of the masked vectors in ``messages``; checks each sender."""
        expander = MaskExpander(self.length, self.config.ring_bits)
        total = expander.accumulator()  # only the sum is kept, never an individual vector
        for cid, raw in messages.items():
            sender, ring_bits, values = MaskedInput.decode_words(raw, self.length)  # a view: no copy
            self._sender_matches(cid, sender, Stage.MASKED_INPUT)
            if ring_bits != self.config.ring_bits:
                raise IntegrityError(f"server, round {self.config.round_id}: client {cid} used another ring")
            np.add(total, values, out=total, casting="unsafe")  # wraps mod the word size
        return total

    @_terminal
    def receive_signatures(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """U4 (malicious model): pass each client its surviving neighbours' signatures on U3."""
        self._enter(Stage.CONSISTENCY)
        self._check_senders(messages, self._u3, Stage.CONSISTENCY)
        sigs = {}
        for cid, raw in messages.items():
            msg = ConsistencySignature.decode(raw)
            self._sender_matches(cid, msg.client_id, Stage.CONSISTENCY)
            sigs[cid] = msg.signature
        abort_if_below_threshold(len(sigs), self.config, Stage.CONSISTENCY)
        self._expect = Stage.UNMASK
        # a client with fewer than t' signers in its neighbourhood would refuse; do not ask it
        asked = [c for c in sorted(sigs) if len(self.neighbors[c] & sigs.keys()) + 1 >= self.share_threshold]
        return self._unmask_requests(asked, sigs)

    def _unmask_requests(self, asked: Sequence[int], sigs: Mapping[int, bytes]) -> dict[int, bytes]:
        u3 = set(self._u3)
        out = {}
        self._requests = {}
        for c in asked:
            holds = (self.neighbors[c] & self._u2) | {c}  # clients whose shares c received
            request = UnmaskRequest(
                survivors=tuple(sorted(holds & u3)),
                dropped=tuple(sorted(holds - u3)),
                signatures=tuple((v, sigs[v]) for v in sorted(self.neighbors[c] & sigs.keys())),
            )
            self._requests[c] = request
            out[c] = request.encode()
        return out

    @_terminal
    def receive_unmask(self, messages: Mapping[int, bytes]) -> ServerResult:
        """U5: reconstruct self masks of survivors and mask keys of the dropped; return the sum."""
        self._enter(Stage.UNMASK)
        self._check_senders(messages, self._requests, Stage.UNMASK)
        self_shares: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in self._u3}
        key_shares: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in self._u2 - set(self._u3)}
        for cid in sorted(messages):
            msg = UnmaskResponse.decode(messages[cid])
            self._sender_matches(cid, msg.client_id, Stage.UNMASK)
            request = self._requests[cid]
            if msg.self_mask_peers != request.survivors or msg.key_peers != request.dropped:
                raise IntegrityError(
                    f"server, round {self.config.round_id}: client {cid} answered another unmask request"
                )
            for peer, row in zip(msg.self_mask_peers, msg.self_mask_shares, strict=True):
                self_shares[peer].append((self._x[cid], row))
            for peer, row in zip(msg.key_peers, msg.key_shares, strict=True):
                key_shares[peer].append((self._x[cid], row))
        abort_if_below_threshold(len(messages), self.config, Stage.UNMASK)
        # only dropped clients with a surviving neighbour left a mask in the sum
        needed_keys = {c: s for c, s in key_shares.items() if self._left_masks(c)}
        seeds = self._reconstruct(self_shares, len(messages))
        keys = self._reconstruct(needed_keys, len(messages))
        self._expect = None
        ring_sum = self._unmasked_sum(seeds, keys)
        return ServerResult(ring_sum, frozenset(self._u3), self.encoding)

    def _left_masks(self, dropped: int) -> bool:
        """Whether the dropped client ``dropped`` (in U2, not U3) left a pairwise mask in the sum."""
        return bool(self.neighbors[dropped] & set(self._u3))

    def _unmasked_sum(self, seeds: Mapping[int, bytes], keys: Mapping[int, bytes]) -> np.ndarray:
        """The masked sum less the survivors' self masks (``seeds``) and the dropped clients' masks."""
        expander = MaskExpander(self.length, self.config.ring_bits)
        total = self._masked_sum
        for c in self._u3:
            expander.subtract(total, seeds[c])
        u3 = set(self._u3)
        for dropped, raw_key in keys.items():
            s_sk = X25519PrivateKey.from_private_bytes(raw_key)
            if raw_public(s_sk) != self._ads[dropped].s_pk:
                raise IntegrityError(
                    f"server, round {self.config.round_id}: shares of client {dropped}'s mask key are wrong"
                )
            for peer in sorted(self.neighbors[dropped] & u3):
                seed = _crypto.mask_seed(s_sk, self._ads[peer].s_pk, self.config.round_id, dropped, peer)
                if peer < dropped:  # the peer added this mask
                    expander.subtract(total, seed)
                else:
                    expander.add(total, seed)
        return total.astype(np.uint64) & self.encoding.modulus_mask

    def _reconstruct(
        self, shares: Mapping[int, list[tuple[int, np.ndarray]]], survivors: int
    ) -> dict[int, bytes]:
        t = self.share_threshold
        for c, items in shares.items():
            if len(items) < t:
                raise self._abort(
                    f"only {len(items)} shares of client {c}'s secret arrived, need {t}", survivors
                )
        order = sorted(shares)
        if not order:
            return {}
        xs = np.asarray([[x for x, _ in shares[c][:t]] for c in order], dtype=np.int64)
        ys = np.asarray([[row for _, row in shares[c][:t]] for c in order], dtype=np.uint64)
        secrets = shamir.reconstruct_batch(xs, ys)
        out = {}
        for c, elements in zip(order, secrets, strict=True):
            try:
                out[c] = shamir.field_to_bytes(elements, 32)
            except ValueError:
                raise IntegrityError(
                    f"server, round {self.config.round_id}: shares of client {c} do not reconstruct"
                ) from None
        return out

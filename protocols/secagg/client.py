"""The SecAgg / SecAgg+ client as a sans-IO state machine.

One method per stage; each takes the server's message for this client (bytes)
and returns this client's reply (bytes)::

    setup         -> advertise()      -> Advertisement
    broadcast     -> share_keys()     -> SharesOut
    shares in     -> masked_input()   -> MaskedInput
    U3            -> consistency()    -> ConsistencySignature   (malicious model only)
    unmask req.   -> unmask()         -> UnmaskResponse

Calling a stage out of order raises :class:`~protocols.errors.StageError`.
Every check that fails raises (``DecodeError`` for malformed bytes,
``IntegrityError`` for a bad signature, ciphertext, key, an inconsistent request
or a setup weaker than the client's :class:`ClientPolicy`) and leaves the
client aborted: it answers nothing more in this round (h11 style: every
further call raises ``StageError``). An exception of any other type inside a
stage is turned into ``IntegrityError``, so nothing but the project's own
errors ever leaves the client.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols import shamir
from protocols.base import Stage
from protocols.encoding import FixedPoint, is_integer_input
from protocols.errors import ConfigError, IntegrityError, ProtocolError, StageError
from protocols.prg import MaskExpander
from protocols.secagg import _crypto
from protocols.secagg.graph import (
    CORRUPTION_RATE,
    choose_degree,
    degree_is_secure,
    effective_degree,
    graph_seed,
    neighbors_of,
    share_threshold,
)
from protocols.secagg.messages import (
    SHARE_ELEMENTS,
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
    encode_ids,
)

__all__ = ["ClientPolicy", "PolicyRefusal", "SecAggClient", "raw_private", "raw_public"]

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


def raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    """32-byte raw public key of ``key``."""
    return key.public_key().public_bytes(_RAW, _RAW_PUB)


def raw_private(key: X25519PrivateKey) -> bytes:
    """32-byte raw private key (what is secret-shared)."""
    return key.private_bytes(_RAW, _RAW_PRIV, _NO_ENC)


class PolicyRefusal(IntegrityError):
    """A Setup weaker than a :class:`ClientPolicy`: ``why``, and the Setup ``field`` at fault."""

    def __init__(self, why: str, field: str) -> None:
        super().__init__(f"setup field {field!r}: {why}")
        self.why, self.field = why, field


@dataclass(frozen=True, kw_only=True)
class ClientPolicy:
    """The security floor one client holds the server's Setup to (its own configuration).

    A client never takes a security parameter on the server's word: it derives
    or bounds each one from this policy and refuses (``IntegrityError``, terminal)
    a Setup that is weaker.

    Attributes:
        min_threshold: the fewest survivors whose sum this client lets be released.
        min_threshold_fraction: ... and at least this fraction of the round's n
            (``threshold >= max(min_threshold, ceil(fraction * n))``).
        min_degree: the least SecAgg+ degree accepted (``>= n - 1``: only the
            complete graph). ``None``: derived from ``corruption_rate``.
        corruption_rate: gamma, the fraction of clients the server may control (its
            own clients, in the malicious model): t' counts that many corrupted share
            holders (:func:`~protocols.secagg.graph.share_threshold`), and with
            ``degree_bound`` the announced degree must meet Bell et al.'s security
            bound for it (:func:`~protocols.secagg.graph.degree_is_secure`).
        degree_bound: check the degree against that bound; ``False``: ``min_degree``
            alone decides (an operator's own fixed degree).
        security_bits: the bound's failure probability, ``2^-security_bits``.
        dropout_rate: when set, the degree must also be at least the one an honest
            server chooses for this dropout rate (:func:`~protocols.secagg.graph.choose_degree`
            with ``corruption_rate``, capped at the complete graph): a deployment's own
            expectation of how many peers go silent. ``None``: security alone decides.
        ring_bits, clip_range, wrap: when set, the Setup must use exactly this
            ring, clipping range and modular-clipping flag (the ones the client
            prepared -- and, with distributed DP, noised -- its input for).
            Unset, any encoding whose sum cannot overflow is accepted.

    Notes:
        Threat: a malicious server announcing ``share_threshold = 1`` and showing
        two groups of clients two survivor sets gets the self-mask share of a victim
        from one group and its key share from the other, and unmasks its input
        (the split view that Bonawitz et al., CCS 2017, defend against with the
        consistency round). So the client computes t' itself with
        :func:`~protocols.secagg.graph.share_threshold`: in the malicious model more
        than half of its m share holders plus the c of them the server may control
        (``corruption_rate``; :func:`~protocols.secagg.graph.corrupt_holders`), so two
        sets of t' responders always share an honest client, who never reveals both
        shares of one peer (Bell et al., CCS 2020; Bonawitz et al.'s ``2t - n > n_c``).
        A bare majority falls to one corrupted holder when m is odd.
        The release threshold bounds how few inputs a released sum may hold (with
        fewer, a server that declares all but one client dropped learns that client's
        input as "the sum"). The default, ``ceil(n / 2)`` and at
        least 1, is the project's default ``threshold_fraction`` (what
        ``Simulation.round_config`` asks for); n is the number of clients the Setup
        invites, so a deployment raises ``min_threshold``, which holds whatever n the
        server names (a round of one client reveals that client's input). The degree bound
        (gamma = 0.05, 2^-40, the setting of Bell et al.'s tables) keeps the chance
        that corrupted clients reach t' in some neighbourhood negligible; the graph
        itself is derived from public data (:func:`~protocols.secagg.graph.graph_seed`).
        Overflow of the ring is refused by construction
        (:meth:`~protocols.encoding.FixedPoint.for_sum`).
    """

    min_threshold: int = 1
    min_threshold_fraction: float = 0.5
    min_degree: int | None = None
    corruption_rate: float = CORRUPTION_RATE
    degree_bound: bool = True
    security_bits: int = 40
    ring_bits: int | None = None
    clip_range: float | None = None
    wrap: bool | None = None
    dropout_rate: float | None = None

    def __post_init__(self) -> None:
        if self.min_threshold < 1:
            raise ConfigError(f"ClientPolicy.min_threshold must be >= 1, got {self.min_threshold}")
        if not 0.0 <= self.min_threshold_fraction <= 1.0:
            raise ConfigError(
                f"ClientPolicy.min_threshold_fraction must be in [0, 1], got {self.min_threshold_fraction}"
            )
        if self.min_degree is not None and self.min_degree < 1:
            raise ConfigError(f"ClientPolicy.min_degree must be >= 1 or None, got {self.min_degree}")
        if not 0.0 <= self.corruption_rate < 0.5:
            raise ConfigError(f"ClientPolicy.corruption_rate must be in [0, 0.5), got {self.corruption_rate}")
        if not 1 <= self.security_bits <= 128:
            raise ConfigError(f"ClientPolicy.security_bits must be in [1, 128], got {self.security_bits}")
        if self.ring_bits is not None and not 8 <= self.ring_bits <= 64:
            raise ConfigError(f"ClientPolicy.ring_bits must be in [8, 64], got {self.ring_bits}")
        if self.dropout_rate is not None and not 0.0 <= self.dropout_rate < 0.5:
            raise ConfigError(f"ClientPolicy.dropout_rate must be in [0, 0.5), got {self.dropout_rate}")
        if self.clip_range is not None and not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError(f"ClientPolicy.clip_range must be positive and finite, got {self.clip_range}")

    def threshold_floor(self, n: int) -> int:
        """The least release threshold accepted for a round of ``n`` clients."""
        return max(self.min_threshold, math.ceil(self.min_threshold_fraction * n))

    def check(self, setup: Setup, malicious: bool) -> int:
        """Refuse a Setup weaker than this policy; return the Shamir threshold t' to use.

        Every security parameter of the Setup is derived or bounded here, never taken on the
        server's word (the class Notes give the rationale of each). Both the protocol's
        client (:class:`SecAggClient`) and a deployment that vets a Setup before any client
        state exists (the Flower node) call this one rule.

        Raises:
            IntegrityError: the first parameter that is weaker; ``field`` names it.
        """
        n = len(setup.client_ids)

        def refuse(why: str, field: str) -> PolicyRefusal:
            return PolicyRefusal(why, field)

        if setup.degree != effective_degree(n, setup.degree):
            raise refuse(f"no {setup.degree}-regular graph on {n} clients", "degree")
        floor = self.threshold_floor(n)
        if setup.threshold < floor:
            raise refuse(f"threshold {setup.threshold} is below this client's floor {floor} for {n} clients",
                         "threshold")
        if self.min_degree is not None and setup.degree < effective_degree(n, self.min_degree):
            raise refuse(f"degree {setup.degree} is below this client's floor "
                         f"{effective_degree(n, self.min_degree)} for {n} clients", "degree")
        if self.degree_bound and not degree_is_secure(
            n, setup.degree, setup.threshold, malicious=malicious,
            corruption_rate=self.corruption_rate, security_bits=self.security_bits,
        ):
            raise refuse(f"degree {setup.degree} is too small for {n} clients at corruption "
                         f"rate {self.corruption_rate} (2^-{self.security_bits})", "degree")
        if self.dropout_rate is not None:
            wanted = min(choose_degree(n, self.dropout_rate, self.corruption_rate,
                                       threshold=setup.threshold, malicious=malicious,
                                       security_bits=self.security_bits), n - 1)
            if setup.degree < wanted:
                raise refuse(f"degree {setup.degree} is below {wanted}, the degree for {n} clients at "
                             f"dropout rate {self.dropout_rate} this client expects", "degree")
        # t' is this client's own: in the malicious model more than half of its holders plus the
        # corrupted ones it must assume (share_threshold), from its own corruption rate
        t = share_threshold(setup.threshold, n, setup.degree, malicious, self.corruption_rate,
                            self.security_bits)
        if setup.share_threshold < t:
            raise refuse(f"share threshold {setup.share_threshold} is below {t}, the one this "
                         "client computes for the round", "share_threshold")
        if setup.graph_seed != graph_seed(setup.round_id, setup.client_ids):
            raise refuse("the graph seed is not the one derived from the round", "graph_seed")
        for name, mine, theirs in (("ring_bits", self.ring_bits, setup.ring_bits),
                                   ("clip_range", self.clip_range, setup.clip_range),
                                   ("wrap", self.wrap, setup.wrap)):
            if mine is not None and theirs != mine:
                raise refuse(f"{name} {theirs} differs from this client's {mine}", name)
        # overflow impossible by construction: refuse an encoding whose sum could wrap, unless the
        # round asks for modular clipping (post-processing of the sum, protocols.encoding)
        try:
            FixedPoint.for_sum(n, setup.clip_range, setup.ring_bits, setup.value_bits, wrap=setup.wrap)
        except ConfigError as exc:
            raise refuse(f"encoding refused: {exc}", "ring_bits") from None
        return t


class SecAggClient:
    """One client of one SecAgg / SecAgg+ round.

    Args:
        client_id: this client's id (0 <= id < 2^63).
        vector: its input, float64 of length L (clipped to the round's range when encoded),
            or integer fixed-point units of the round's encoding (checked at setup, never
            clipped; :mod:`protocols.encoding`).
        malicious: expect the malicious-model protocol (signed keys, consistency
            round); a setup message that says otherwise is refused.
        identity_key: this client's long-term Ed25519 key (malicious model).
        identity_keys: the PKI: client id -> raw Ed25519 public key (malicious model).
        round_id: if given, a setup for another round is refused.
        randbytes: source of every secret (key pairs, self-mask seed, share polynomials).
        rng: generator for stochastic rounding only (not secret); default ``default_rng()``.
        policy: the floor this client holds the server's Setup to; default ``ClientPolicy()``
            (threshold >= ceil(n/2), share threshold computed by the client, degree
            within Bell et al.'s bound for 5 % corrupted clients, graph seed derived from
            the round, no overflow).
    """

    def __init__(
        self,
        client_id: int,
        vector: np.ndarray,
        *,
        malicious: bool = True,
        identity_key: Ed25519PrivateKey | None = None,
        identity_keys: Mapping[int, bytes] | None = None,
        round_id: int | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        rng: np.random.Generator | None = None,
        policy: ClientPolicy | None = None,
    ) -> None:
        if malicious and (identity_key is None or identity_keys is None):
            raise ConfigError(f"client {client_id}: the malicious model needs identity_key and identity_keys")
        self.client_id = client_id
        v = np.asarray(vector)
        self._vector = v if is_integer_input(v) else np.asarray(v, dtype=np.float64)
        self._malicious = malicious
        self._identity = identity_key
        self._pki = dict(identity_keys or {})
        self._round_id = round_id
        self._randbytes = randbytes
        self._rng = rng if rng is not None else np.random.default_rng()
        self._policy = policy if policy is not None else ClientPolicy()
        self._t = 0  # the Shamir threshold t', computed by this client at setup
        self._expect: Stage | None = Stage.ADVERTISE
        self._done = False
        # filled as the round goes
        self._setup: Setup | None = None
        self._announced_round: int | None = None  # the round id of the setup, once one decoded
        self._neighbors: frozenset[int] = frozenset()
        self._x: dict[int, int] = {}
        self._c_sk: X25519PrivateKey | None = None
        self._s_sk: X25519PrivateKey | None = None
        self._ads: dict[int, Advertisement] = {}
        self._c_shared: dict[int, bytes] = {}  # X25519 agreement of c keys, per neighbour
        self._own_keys: frozenset[bytes] = frozenset()  # this client's two public keys of the round
        self._shares: dict[int, np.ndarray] = {}  # peer -> 2*SHARE_ELEMENTS field elements it gave us
        self._survivors: tuple[int, ...] | None = None
        self._survivors_encoded = b""

    # ---- state machine -------------------------------------------------------------
    @property
    def stage(self) -> Stage | None:
        """The stage whose method may be called next (``None``: finished or aborted)."""
        return self._expect

    def _enter(self, stage: Stage) -> None:
        if self._expect is not stage:
            state = "finished or aborted" if self._expect is None else f"expects {self._expect.name}"
            self._expect = None  # a replayed or reordered stage is a deviation: refuse from now on
            raise StageError(f"client {self.client_id}: {stage.name} called, but the client {state}")

    def _run(
        self, stage: Stage, step: Callable[[bytes], tuple[bytes, Stage | None]], message: bytes
    ) -> bytes:
        self._enter(stage)
        try:
            reply, following = step(message)
        except (ProtocolError, ConfigError):
            self._expect = None
            raise
        except Exception as exc:  # e.g. cryptography's ValueError on a malformed key: never escapes bare
            self._expect = None
            raise self._fail(stage.name.lower().replace("_", " "),
                             f"{type(exc).__name__} inside the stage; refused") from exc
        self._expect = following
        return reply

    def advertise(self, setup: bytes) -> bytes:
        """Stage ADVERTISE: check the setup, make the two key pairs, return the (signed) advertisement."""
        return self._run(Stage.ADVERTISE, self._advertise, setup)

    def share_keys(self, broadcast: bytes) -> bytes:
        """Stage SHARE_KEYS: check the neighbours' keys, share s_sk and the self-mask seed."""
        return self._run(Stage.SHARE_KEYS, self._share_keys, broadcast)

    def masked_input(self, shares_in: bytes) -> bytes:
        """Stage MASKED_INPUT: decrypt the shares received, return the masked vector."""
        return self._run(Stage.MASKED_INPUT, self._masked_input, shares_in)

    def consistency(self, request: bytes) -> bytes:
        """Stage CONSISTENCY (malicious model): sign the survivor set U3."""
        return self._run(Stage.CONSISTENCY, self._consistency, request)

    def unmask(self, request: bytes) -> bytes:
        """Stage UNMASK: reveal self-mask shares of survivors and key shares of dropped peers."""
        return self._run(Stage.UNMASK, self._unmask, request)

    # ---- stages --------------------------------------------------------------------
    def _fail(self, stage: str, why: str) -> IntegrityError:
        rid = self._announced_round if self._announced_round is not None else "?"
        return IntegrityError(f"client {self.client_id}, round {rid}, {stage}: {why}")

    def _advertise(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup = Setup.decode(message)
        self._announced_round = setup.round_id
        if setup.client_id != self.client_id:
            raise self._fail("setup", f"addressed to client {setup.client_id}")
        if self._round_id is not None and setup.round_id != self._round_id:
            raise self._fail("setup", f"setup is for round {setup.round_id}")
        if setup.malicious != self._malicious:
            raise self._fail("setup", "the server asked for another threat model")
        if setup.length != self._vector.shape[0]:
            raise self._fail("setup", f"length {setup.length} != input length {self._vector.shape[0]}")
        self._t = self._enforce_policy(setup)
        n = len(setup.client_ids)
        fp = FixedPoint.for_sum(n, setup.clip_range, setup.ring_bits, setup.value_bits, wrap=setup.wrap)
        if is_integer_input(self._vector):  # units are never clipped: refuse before any key exists
            fp.units(self._vector, who=f"client {self.client_id}, round {setup.round_id}")
        self._neighbors = neighbors_of(self.client_id, setup.client_ids, setup.degree, setup.graph_seed)
        self._x = {c: i + 1 for i, c in enumerate(setup.client_ids)}
        self._setup = setup
        self._c_sk = X25519PrivateKey.from_private_bytes(self._randbytes(32))
        self._s_sk = X25519PrivateKey.from_private_bytes(self._randbytes(32))
        c_pk, s_pk = raw_public(self._c_sk), raw_public(self._s_sk)
        self._own_keys = frozenset((c_pk, s_pk))
        signature = b""
        if self._malicious:
            if self._identity is None:  # checked in __init__; kept for the type checker
                raise ConfigError("no identity key")
            payload = _crypto.advertisement_payload(setup.round_id, self.client_id, c_pk, s_pk)
            signature = _crypto.sign(self._identity, payload)
        return Advertisement(self.client_id, c_pk, s_pk, signature).encode(), Stage.SHARE_KEYS

    def _enforce_policy(self, setup: Setup) -> int:
        """:meth:`ClientPolicy.check` of this client's policy; a refusal makes this client terminal."""
        try:
            return self._policy.check(setup, self._malicious)
        except PolicyRefusal as exc:
            raise self._fail("setup", exc.why) from None

    def _share_keys(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup, c_sk, s_sk = self._setup, self._c_sk, self._s_sk
        if setup is None or c_sk is None or s_sk is None:
            raise StageError("client state incomplete")
        broadcast = AdvertiseBroadcast.decode(message)
        ads: dict[int, Advertisement] = {}
        seen_keys = set(self._own_keys)
        for ad in broadcast.advertisements:
            if ad.client_id not in self._neighbors:
                raise self._fail("share keys", f"advertisement of non-neighbour {ad.client_id}")
            self._accept_advertisement(setup, ad, seen_keys)
            ads[ad.client_id] = ad
        self._ads = ads
        return self._deal_shares(setup, c_sk, s_sk, ads), Stage.MASKED_INPUT

    def _accept_advertisement(self, setup: Setup, ad: Advertisement, seen_keys: set[bytes]) -> None:
        """Check a peer's advertisement: signed by its identity (malicious model), keys never seen before."""
        if self._malicious:
            pk = self._pki.get(ad.client_id)
            if pk is None or len(ad.signature) == 0:
                raise self._fail("share keys", f"unsigned or unknown peer {ad.client_id}")
            _crypto.verify(
                pk, ad.signature,
                _crypto.advertisement_payload(setup.round_id, ad.client_id, ad.c_pk, ad.s_pk),
                f"client {self.client_id}, round {setup.round_id}, advertisement of {ad.client_id}",
            )
        if ad.c_pk in seen_keys or ad.s_pk in seen_keys or ad.c_pk == ad.s_pk:
            raise self._fail("share keys", f"repeated public key from {ad.client_id}")
        seen_keys.update((ad.c_pk, ad.s_pk))

    def _deal_shares(
        self, setup: Setup, c_sk: X25519PrivateKey, s_sk: X25519PrivateKey, ads: Mapping[int, Advertisement]
    ) -> bytes:
        """Draw the self-mask seed; Shamir-share it and s_sk among ``ads`` (neighbours) and this client."""
        if len(ads) + 1 < self._t:
            raise self._fail("share keys", f"only {len(ads) + 1} share holders, threshold is {self._t}")
        self._self_seed = self._randbytes(32)
        holders = sorted([*ads, self.client_id])
        secret = np.concatenate(
            [shamir.bytes_to_field(raw_private(s_sk)), shamir.bytes_to_field(self._self_seed)]
        )
        rows = shamir.split(secret, [self._x[c] for c in holders], self._t, self._randbytes)
        wire_rows = rows.astype(">u8")  # big-endian field elements, as the share plaintext carries them
        out = []
        for i, holder in enumerate(holders):
            if holder == self.client_id:
                self._shares[self.client_id] = rows[i]
                continue
            head = _crypto.share_header(setup.round_id, self.client_id, holder)
            shared = _crypto.agree(c_sk, ads[holder].c_pk)
            self._c_shared[holder] = shared
            key = _crypto.share_key(shared, setup.round_id, self.client_id, holder)
            out.append((holder, _crypto.encrypt_share(key, head, head[8:] + wire_rows[i].tobytes())))
        return SharesOut(self.client_id, tuple(out)).encode()

    def _masked_input(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup, c_sk, s_sk = self._setup, self._c_sk, self._s_sk
        if setup is None or c_sk is None or s_sk is None:
            raise StageError("client state incomplete")
        received = SharesIn.decode(message)
        peers, plains = [], []
        for sender, ct in received.shares:
            if sender not in self._c_shared:  # the neighbours this client dealt shares to
                raise self._fail("masked input", f"share from {sender}, who is not an advertised neighbour")
            head = _crypto.share_header(setup.round_id, sender, self.client_id)
            key = _crypto.share_key(self._c_shared[sender], setup.round_id, sender, self.client_id)
            plain = _crypto.decrypt_share(
                key, head, ct, f"client {self.client_id}, round {setup.round_id}, share from {sender}"
            )
            if plain[:16] != head[8:]:
                raise self._fail("masked input", f"share from {sender} names other parties")
            peers.append(sender)
            plains.append(plain[16:])
        # every share's field elements at once: (peers, 2 * SHARE_ELEMENTS)
        rows = np.frombuffer(b"".join(plains), dtype=">u8").astype(np.uint64)
        rows = rows.reshape(len(peers), 2 * SHARE_ELEMENTS)
        bad = np.flatnonzero((rows >= np.uint64(shamir.PRIME)).any(axis=1))
        if bad.size:
            raise self._fail("masked input", f"share from {peers[bad[0]]} is not a field element")
        self._shares.update(zip(peers, rows, strict=True))
        if len(peers) + 1 < self._t:
            raise self._fail("masked input", f"only {len(peers) + 1} share holders, threshold is {self._t}")
        acc = self._masked_vector(setup, s_sk, peers)
        # the key pairs and the self-mask seed are never needed again: drop them
        self._self_seed = b""
        self._c_shared = {}
        self._c_sk = self._s_sk = None
        following = Stage.CONSISTENCY if self._malicious else Stage.UNMASK
        return MaskedInput(self.client_id, setup.ring_bits, acc).encode(), following

    def _masked_vector(self, setup: Setup, s_sk: X25519PrivateKey, peers: list[int]) -> np.ndarray:
        """This client's encoded input, its self mask and its pairwise masks with ``peers``, in Z_{2^b}."""
        fp = FixedPoint(clip_range=setup.clip_range, value_bits=setup.value_bits, ring_bits=setup.ring_bits,
                        wrap=setup.wrap)
        expander = MaskExpander(setup.length, setup.ring_bits)
        # the signed units modulo the accumulator's word size (2^32 or 2^64), which 2^b divides
        acc = fp.quantize(self._vector, self._rng).astype(expander.dtype)
        expander.add(acc, self._self_seed)
        for peer in peers:
            seed = _crypto.mask_seed(s_sk, self._ads[peer].s_pk, setup.round_id, self.client_id, peer)
            if self.client_id < peer:
                expander.add(acc, seed)
            else:
                expander.subtract(acc, seed)
        acc &= acc.dtype.type(fp.modulus_mask)  # reduce into Z_{2^b} in place (2^b divides the word size)
        return acc

    def _consistency(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup = self._setup
        if setup is None or self._identity is None:
            raise StageError("client state incomplete")
        survivors = ConsistencyRequest.decode(message).survivors
        self._check_survivors(survivors, "consistency")
        self._survivors = survivors
        self._survivors_encoded = self._signed_view(survivors)
        payload = _crypto.consistency_payload(setup.round_id, self._survivors_encoded)
        signature = _crypto.sign(self._identity, payload)
        return ConsistencySignature(self.client_id, signature).encode(), Stage.UNMASK

    def _signed_view(self, survivors: tuple[int, ...]) -> bytes:
        """What the consistency signatures bind besides the round: the canonical encoding of U3."""
        return encode_ids(survivors)

    def _check_survivors(self, survivors: tuple[int, ...], stage: str) -> None:
        setup = self._setup
        if setup is None:
            raise StageError("client state incomplete")
        if self.client_id not in survivors:
            raise self._fail(stage, "this client is missing from the survivor set")
        if len(survivors) < setup.threshold:
            raise self._fail(stage, f"only {len(survivors)} survivors, threshold is {setup.threshold}")
        unknown = set(survivors) - set(self._x)
        if unknown:
            raise self._fail(stage, f"survivor set names unknown clients {sorted(unknown)[:5]}")
        for peer in self._neighbors.intersection(survivors):
            if peer not in self._shares:
                raise self._fail(stage, f"neighbour {peer} is called a survivor but never shared keys")

    def _unmask(self, message: bytes) -> tuple[bytes, Stage | None]:
        setup = self._setup
        if setup is None:
            raise StageError("client state incomplete")
        request = UnmaskRequest.decode(message)
        alive, dead = set(request.survivors), set(request.dropped)
        both = alive & dead
        if both:
            raise self._fail("unmask", f"asked for both shares of client {min(both)}; refused")
        if self.client_id in dead:
            raise self._fail("unmask", "asked for the key share of this (live) client")
        unknown = (alive | dead) - set(self._shares)
        if unknown:
            raise self._fail(
                "unmask", f"asked about clients whose shares it does not hold: {sorted(unknown)[:5]}"
            )
        if self._malicious:
            survivors = self._survivors
            if survivors is None or self._identity is None:
                raise StageError("client state incomplete")
            signed = set(survivors)
            if alive != signed & set(self._shares) or dead & signed:
                raise self._fail("unmask", "request disagrees with the signed survivor set")
            payload = _crypto.consistency_payload(setup.round_id, self._survivors_encoded)
            signers = {self.client_id}
            for signer, signature in request.signatures:
                if signer not in self._neighbors or signer not in signed:
                    raise self._fail("unmask", f"signature from {signer}, not a surviving neighbour")
                _crypto.verify(
                    self._pki.get(signer, b""), signature, payload,
                    f"client {self.client_id}, round {setup.round_id}, consistency signature of {signer}",
                )
                signers.add(signer)
            if len(signers) < self._t:
                raise self._fail("unmask", f"only {len(signers)} consistency signatures, need {self._t}")
        live_ids = tuple(sorted(alive))
        dead_ids = tuple(sorted(dead))
        empty = np.zeros((0, SHARE_ELEMENTS), dtype=np.uint64)
        live = np.stack([self._shares[c][SHARE_ELEMENTS:] for c in live_ids]) if live_ids else empty
        gone = np.stack([self._shares[c][:SHARE_ELEMENTS] for c in dead_ids]) if dead_ids else empty
        self._shares = {}
        return UnmaskResponse(self.client_id, live_ids, live, dead_ids, gone).encode(), None

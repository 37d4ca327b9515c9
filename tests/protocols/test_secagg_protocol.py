"""SecAgg state machines: stage table, integrity failures, malicious-server attacks, decoding fuzz."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import DecodeError, IntegrityError, RoundConfig, Stage, StageError
from protocols.errors import AggregationAborted, ConfigError
from protocols.secagg import (
    ClientPolicy,
    SecAggAggregator,
    SecAggClient,
    SecAggPlusAggregator,
    SecAggServer,
    choose_degree,
    corrupt_holders,
    degree_is_secure,
    effective_degree,
    graph_seed,
    harary_neighbors,
    share_threshold,
)
from protocols.secagg import messages as m
from protocols.secagg.client import raw_public

L = 16
IDS = [3, 10, 42, 77]


def pinned(label: str) -> Callable[[int], bytes]:
    counter = [0]

    def randbytes(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(f"{label}/{counter[0]}".encode()).digest(n) if n else b""

    return randbytes


class Round:
    """A small round driven by hand, so tests can stop, replay or tamper at any stage."""

    METHODS = ("advertise", "share_keys", "masked_input", "consistency", "unmask")

    def __init__(self, malicious: bool = True, neighbors: int | None = None, threshold: int = 3) -> None:
        rb = pinned(f"round-{malicious}-{neighbors}")
        self.malicious = malicious
        self.cfg = RoundConfig(threshold=threshold, ring_bits=32, round_id=5)
        rng = np.random.default_rng(0)
        self.inputs = {c: rng.uniform(-1, 1, L) for c in IDS}
        ident = {c: Ed25519PrivateKey.from_private_bytes(rb(32)) for c in IDS}
        pki = {c: raw_public(k) for c, k in ident.items()}
        self.server = SecAggServer(self.cfg, IDS, L, neighbors=neighbors, malicious=malicious, randbytes=rb)
        self.clients = {
            c: SecAggClient(
                c, self.inputs[c], malicious=malicious, identity_key=ident[c] if malicious else None,
                identity_keys=pki if malicious else None, round_id=5, randbytes=rb,
                rng=np.random.default_rng(c),
            )
            for c in IDS
        }
        self.inbox: dict[int, bytes] = self.server.setup()
        self.steps = [
            ("advertise", self.server.receive_advertisements),
            ("share_keys", self.server.receive_shares),
            ("masked_input", self.server.receive_masked_inputs),
        ]
        if malicious:
            self.steps.append(("consistency", self.server.receive_signatures))
        self.done = 0
        self.result = None

    def client_step(self, skip: frozenset[int] = frozenset()) -> dict[int, bytes]:
        method = self.steps[self.done][0] if self.done < len(self.steps) else "unmask"
        return {c: getattr(self.clients[c], method)(msg) for c, msg in self.inbox.items() if c not in skip}

    def advance(self, stages: int) -> dict[int, bytes]:
        """Run ``stages`` client stages and the server's answers; return the last client replies."""
        replies: dict[int, bytes] = {}
        for _ in range(stages):
            replies = self.client_step()
            if self.done < len(self.steps):
                self.inbox = self.steps[self.done][1](replies)
            else:
                self.result = self.server.receive_unmask(replies)
            self.done += 1
        return replies


# ---- stage-transition table ------------------------------------------------------------
# (client state = the stage the client expects next, None = finished) -> the one valid call
CLIENT_STAGES: list[Stage | None] = [*Stage, None]
VALID_MALICIOUS = {(s, s) for s in Stage}
VALID_SEMI_HONEST = {(s, s) for s in Stage if s is not Stage.CONSISTENCY}


@pytest.mark.parametrize("malicious", [True, False])
@pytest.mark.parametrize("called", list(Stage))
@pytest.mark.parametrize("current", CLIENT_STAGES)
def test_client_stage_table(malicious: bool, current: Stage | None, called: Stage) -> None:
    order = [s for s in Stage if malicious or s is not Stage.CONSISTENCY]
    if current is Stage.CONSISTENCY and not malicious:
        pytest.skip("the semi-honest client never waits for CONSISTENCY")
    rnd = Round(malicious=malicious)
    reached = len(order) if current is None else order.index(current)
    rnd.advance(reached)
    client = rnd.clients[IDS[0]]
    assert client.stage is current
    valid = VALID_MALICIOUS if malicious else VALID_SEMI_HONEST
    method = getattr(client, Round.METHODS[int(called)])
    if (current, called) in valid:
        method(rnd.inbox[IDS[0]])
    else:
        with pytest.raises(StageError):
            method(b"")


@pytest.mark.parametrize("malicious", [True, False])
def test_server_stage_table(malicious: bool) -> None:
    rnd = Round(malicious=malicious)
    server_methods = {
        Stage.ADVERTISE: rnd.server.receive_advertisements,
        Stage.SHARE_KEYS: rnd.server.receive_shares,
        Stage.MASKED_INPUT: rnd.server.receive_masked_inputs,
        Stage.CONSISTENCY: rnd.server.receive_signatures,
        Stage.UNMASK: rnd.server.receive_unmask,
    }
    order = [s for s in Stage if malicious or s is not Stage.CONSISTENCY]
    with pytest.raises(StageError):
        rnd.server.setup()  # already called by Round
    for i, expected in enumerate([*order, None]):
        assert rnd.server.stage is expected
        for stage, method in server_methods.items():
            if stage is not expected:
                with pytest.raises(StageError):
                    method({})
        if i < len(order):
            rnd.advance(1)
    assert rnd.result is not None


def test_client_aborts_after_an_integrity_failure() -> None:
    rnd = Round()
    rnd.advance(1)
    cid = IDS[0]
    bad = bytearray(rnd.inbox[cid])
    bad[-1] ^= 1  # flip a bit of a signature
    with pytest.raises(IntegrityError):
        rnd.clients[cid].share_keys(bytes(bad))
    assert rnd.clients[cid].stage is None
    with pytest.raises(StageError):
        rnd.clients[cid].share_keys(rnd.inbox[cid])


# ---- the malicious-server attacks ------------------------------------------------------
@pytest.mark.parametrize("malicious", [True, False])
def test_client_refuses_to_reveal_both_shares_of_a_peer(malicious: bool) -> None:
    rnd = Round(malicious=malicious)
    rnd.advance(4 if malicious else 3)
    cid, victim = IDS[0], IDS[1]
    request = m.UnmaskRequest.decode(rnd.inbox[cid])
    assert victim in request.survivors
    evil = m.UnmaskRequest(request.survivors, (victim,), request.signatures).encode()
    with pytest.raises(IntegrityError, match="both shares"):
        rnd.clients[cid].unmask(evil)


def test_client_refuses_key_share_of_a_signed_survivor() -> None:
    rnd = Round(malicious=True)
    rnd.advance(4)
    cid, victim = IDS[0], IDS[1]
    request = m.UnmaskRequest.decode(rnd.inbox[cid])
    alive = tuple(c for c in request.survivors if c != victim)
    evil = m.UnmaskRequest(alive, (victim,), request.signatures).encode()
    with pytest.raises(IntegrityError, match="signed survivor set"):
        rnd.clients[cid].unmask(evil)


def test_client_refuses_forged_consistency_signature() -> None:
    rnd = Round(malicious=True)
    rnd.advance(4)
    cid = IDS[0]
    request = m.UnmaskRequest.decode(rnd.inbox[cid])
    signer, _ = request.signatures[0]
    forged = ((signer, bytes(64)), *request.signatures[1:])
    with pytest.raises(IntegrityError, match="invalid signature"):
        rnd.clients[cid].unmask(m.UnmaskRequest(request.survivors, request.dropped, forged).encode())


def test_client_refuses_too_few_consistency_signatures() -> None:
    rnd = Round(malicious=True)
    rnd.advance(4)
    cid = IDS[0]
    request = m.UnmaskRequest.decode(rnd.inbox[cid])
    with pytest.raises(IntegrityError, match="consistency signatures"):
        rnd.clients[cid].unmask(m.UnmaskRequest(request.survivors, request.dropped, ()).encode())


def test_client_refuses_substituted_public_key() -> None:
    rnd = Round(malicious=True)
    rnd.advance(1)
    cid = IDS[0]
    bc = m.AdvertiseBroadcast.decode(rnd.inbox[cid])
    ad = bc.advertisements[0]
    swapped = m.Advertisement(ad.client_id, ad.c_pk, bytes(32), ad.signature)
    evil = m.AdvertiseBroadcast((swapped, *bc.advertisements[1:])).encode()
    with pytest.raises(IntegrityError, match="invalid signature"):
        rnd.clients[cid].share_keys(evil)


def test_client_refuses_downgrade_to_semi_honest() -> None:
    rnd = Round(malicious=True)
    cid = IDS[0]
    setup = m.Setup.decode(rnd.inbox[cid])
    fields = {k: getattr(setup, k) for k in setup.__dataclass_fields__}
    evil = m.Setup(**{**fields, "malicious": False}).encode()
    with pytest.raises(IntegrityError, match="threat model"):
        rnd.clients[cid].advertise(evil)


def test_wrap_travels_in_the_setup_flags_and_unknown_flags_are_refused() -> None:
    rnd = Round(malicious=True)
    setup = m.Setup.decode(rnd.inbox[IDS[0]])
    fields = {k: getattr(setup, k) for k in setup.__dataclass_fields__}
    wrapped = m.Setup(**{**fields, "wrap": True})
    back = m.Setup.decode(wrapped.encode())
    assert (back.wrap, back.malicious) == (True, True)
    plain, raw = setup.encode(), bytearray(wrapped.encode())
    (at,) = [i for i in range(len(raw)) if raw[i] != plain[i]]  # the one flags byte
    assert raw[at] == 3
    raw[at] = 4
    with pytest.raises(DecodeError, match="unknown flags"):
        m.Setup.decode(bytes(raw))


def test_client_refuses_tampered_share_ciphertext() -> None:
    rnd = Round(malicious=False)
    rnd.advance(2)
    cid = IDS[0]
    shares = m.SharesIn.decode(rnd.inbox[cid])
    sender, ct = shares.shares[0]
    evil = m.SharesIn(((sender, ct[:-1] + bytes([ct[-1] ^ 1])), *shares.shares[1:])).encode()
    with pytest.raises(IntegrityError, match="authentication"):
        rnd.clients[cid].masked_input(evil)


def test_client_refuses_overflowing_encoding() -> None:
    rnd = Round(malicious=False)
    cid = IDS[0]
    setup = m.Setup.decode(rnd.inbox[cid])
    fields = {k: getattr(setup, k) for k in setup.__dataclass_fields__}
    evil = m.Setup(**{**fields, "value_bits": 32}).encode()  # 4 clients * 2^31 overflows Z_2^32
    with pytest.raises(IntegrityError, match="overflows"):
        rnd.clients[cid].advertise(evil)
    assert rnd.clients[cid].stage is None


def test_server_rejects_impersonation() -> None:
    rnd = Round(malicious=False)
    replies = rnd.client_step()
    replies[IDS[0]] = replies[IDS[1]]
    with pytest.raises(IntegrityError, match=f"client {IDS[0]}"):
        rnd.server.receive_advertisements(replies)


def test_masked_input_hides_the_input() -> None:
    rnd = Round(malicious=False)
    rnd.advance(2)
    masked = rnd.client_step()
    for cid, raw in masked.items():
        values = m.MaskedInput.decode(raw, L).values
        assert not np.allclose(values.astype(np.float64), 0)
        assert (values.view(np.int64) < 2**32).all()
        enc = np.round(rnd.inputs[cid] * (2**29 - 1)).astype(np.int64).view(np.uint64) & np.uint64(2**32 - 1)
        assert (np.abs(values.astype(np.int64) - enc.astype(np.int64)) > 2).sum() > L // 2


def test_abort_below_threshold_before_unmask_reveals_nothing() -> None:
    rnd = Round(malicious=False, threshold=4)
    rnd.advance(2)
    replies = rnd.client_step(skip=frozenset({IDS[0]}))
    with pytest.raises(AggregationAborted) as info:
        rnd.server.receive_masked_inputs(replies)
    assert info.value.threshold == 4 and info.value.survivors == 3
    assert rnd.server.stage is None  # nothing was sent on, and the server is done with the round
    with pytest.raises(StageError):
        rnd.server.receive_masked_inputs(replies)


# ---- randomness, bytes, results --------------------------------------------------------
def test_pinned_randbytes_and_rng_make_rounds_reproducible() -> None:
    inputs = {c: np.linspace(-1, 1, L) * (i + 1) / 5 for i, c in enumerate(IDS)}
    cfg = RoundConfig(threshold=2)
    a = SecAggAggregator(randbytes=pinned("r"), rng=np.random.default_rng(1)).aggregate(inputs, cfg)
    b = SecAggAggregator(randbytes=pinned("r"), rng=np.random.default_rng(1)).aggregate(inputs, cfg)
    assert (a.total == b.total).all() and a.bytes_up == b.bytes_up


def test_bytes_match_the_encoded_messages() -> None:
    rnd = Round(malicious=False)
    agg = SecAggAggregator(malicious=False, randbytes=pinned("b"))
    res = agg.aggregate(rnd.inputs, rnd.cfg)
    # semi-honest: advert (9+8+64+1) + shares out + masked input (9+9+4L) + unmask response
    n = len(IDS)
    shares_out = 9 + 8 + 4 + (n - 1) * (8 + m.CIPHERTEXT_BYTES)
    unmask = 9 + 8 + (len(m.encode_ids(IDS)) + 40 * n) + len(m.encode_ids(()))  # id lists: varint gaps
    masked = 9 + 9 + 4 * L
    for c in IDS:
        assert res.bytes_up[c] == (9 + 73) + shares_out + masked + unmask
        assert res.bytes_down[c] > 0


def test_semi_honest_sends_no_signatures() -> None:
    rnd = Round(malicious=False)
    replies = rnd.client_step()
    for raw in replies.values():
        assert m.Advertisement.decode(raw).signature == b""


# ---- graph and parameters --------------------------------------------------------------
@pytest.mark.parametrize(("n", "k"), [(10, 4), (11, 4), (12, 3), (11, 3), (30, 6), (5, 10)])
def test_harary_graph_is_regular_and_symmetric(n: int, k: int) -> None:
    ids = list(range(100, 100 + 3 * n, 3))
    deg = effective_degree(n, k)
    graph = harary_neighbors(ids, deg, bytes(32))
    assert all(len(v) == deg and c not in v for c, v in graph.items())
    assert all(c in graph[v] for c, vs in graph.items() for v in vs)


def test_graph_depends_on_the_seed() -> None:
    ids = list(range(40))
    assert harary_neighbors(ids, 4, bytes(32)) != harary_neighbors(ids, 4, b"\x01" * 32)


def test_choose_degree_grows_logarithmically() -> None:
    ks = [choose_degree(n, 0.1, 0.05) for n in (100, 1000, 10_000, 100_000)]
    assert ks == sorted(ks) and ks[-1] < 100 and ks[0] < 99
    assert choose_degree(8) == 7  # small n: the complete graph
    with pytest.raises(ValueError):
        choose_degree(100, 0.6, 0.0)


@pytest.mark.parametrize(("n", "dropout", "fraction", "malicious"), [
    (100, 0.05, 0.5, True), (190, 0.05, 0.5, False), (1000, 0.1, 0.5, True), (1000, 0.41, 0.3, False),
    (5000, 0.41, 0.5, True), (200, 0.2, 0.5, True),
])
def test_choose_degree_holds_for_the_threshold_the_aggregator_uses(
    n: int, dropout: float, fraction: float, malicious: bool
) -> None:
    """Both of Bell et al.'s bounds hold for share_threshold's t' at the chosen k, and fail at k - 2."""
    from protocols.secagg.graph import _binom_mass

    threshold = math.ceil(fraction * n)

    def ok(k: int) -> bool:
        m, t = k + 1, share_threshold(threshold, n, k, malicious)
        return (_binom_mass(m, 0.05, t, m + 1) <= 2.0**-40 / n
                and _binom_mass(m, 1 - dropout, 0, t) <= 2.0**-20 / n)

    k = choose_degree(n, dropout, 0.05, threshold=threshold, malicious=malicious)
    assert k == n - 1 or ok(k)
    assert k <= 2 or not ok(k - 2)


def test_choose_degree_without_the_threshold_undershoots_at_high_dropout() -> None:
    """41 % gone by the unmask stage (10 % per stage): the protocol-agnostic degree leaves a
    malicious-model neighbourhood (majority t') short of shares in several percent of cases."""
    from protocols.secagg.graph import _binom_mass

    n, threshold = 190, 95
    agnostic = choose_degree(n, 0.41, 0.05)
    t = share_threshold(threshold, n, agnostic, malicious=True)
    assert _binom_mass(agnostic + 1, 0.59, 0, t) > 0.01  # per neighbourhood, against 2^-20 / n
    assert choose_degree(n, 0.41, 0.05, threshold=threshold, malicious=True) == n - 1  # the complete graph


def test_share_threshold_rules() -> None:
    assert share_threshold(7, 10, 9, malicious=True) == 7  # complete graph: t' = threshold
    assert share_threshold(50, 100, 10, malicious=False) == 6  # scaled: ceil(50 * 11 / 100)
    # malicious: more than half of m = 11 holders plus the c the server may control
    assert share_threshold(10, 100, 10, malicious=True, corruption_rate=0.0) == 6  # bare majority
    assert corrupt_holders(100, 10, 0.05) == 5  # ceil(0.05 * 100): the binomial tail is looser here
    assert share_threshold(10, 100, 10, malicious=True) == 9  # (11 + 5) // 2 + 1
    assert corrupt_holders(10_000, 60, 0.05) == 24  # P(Bin(61, 0.05) > 24) <= 2^-40 / 10^4 < P(> 23)
    assert share_threshold(5_000, 10_000, 60, malicious=True) == 43  # (61 + 24) // 2 + 1
    assert share_threshold(1, 11, 10, malicious=True) == 7  # odd complete graph, c = 1: not 6
    assert share_threshold(1, 10, 9, malicious=True) == 6  # even: the majority already covers c = 1


def test_secagg_plus_aggregator_defaults() -> None:
    agg = SecAggPlusAggregator()
    assert agg.name == "secagg+" and SecAggAggregator.name == "secagg"
    assert agg.degree_for(1000, RoundConfig()) == choose_degree(1000, 0.05, 0.05, threshold=1, malicious=True)
    assert agg.degree_for(1000, RoundConfig(neighbors=6)) == 6


# ---- decoding fuzz ---------------------------------------------------------------------
DECODERS: list[Callable[[bytes], object]] = [
    m.Setup.decode, m.Advertisement.decode, m.AdvertiseBroadcast.decode, m.SharesOut.decode,
    m.SharesIn.decode, lambda b: m.MaskedInput.decode(b, L), m.ConsistencyRequest.decode,
    m.ConsistencySignature.decode, m.UnmaskRequest.decode, m.UnmaskResponse.decode,
]


def _valid_messages() -> list[bytes]:
    rnd = Round(malicious=True)
    out = [next(iter(rnd.inbox.values()))]
    for _ in range(4):
        out.append(next(iter(rnd.advance(1).values())))
        out.append(next(iter(rnd.inbox.values())))
    out.append(next(iter(rnd.advance(1).values())))
    return out


VALID = _valid_messages()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), which=st.integers(0, len(DECODERS) - 1))
def test_garbage_raises_decode_error(data: bytes, which: int) -> None:
    with pytest.raises(DecodeError):
        DECODERS[which](data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(VALID) - 1), cut=st.integers(1, 50), pos=st.integers(0, 10**6),
    bit=st.integers(0, 7),
)
def test_truncated_or_flipped_messages(which: int, cut: int, pos: int, bit: int) -> None:
    raw = VALID[which]
    for decoder in DECODERS:
        with pytest.raises(DecodeError):
            decoder(raw[: max(0, len(raw) - cut)])
        flipped = bytearray(raw)
        flipped[pos % len(raw)] ^= 1 << bit
        with contextlib.suppress(DecodeError):  # anything else escaping fails the test
            decoder(bytes(flipped))


def test_valid_messages_round_trip() -> None:
    for raw in VALID:
        decoded = [d(raw) for d in DECODERS if _decodes(d, raw)]
        assert len(decoded) == 1
        assert decoded[0].encode() == raw  # type: ignore[attr-defined]


def _decodes(decoder: Callable[[bytes], object], raw: bytes) -> bool:
    try:
        decoder(raw)
    except DecodeError:
        return False
    return True


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), info=st.binary(max_size=80))
def test_fast_hkdf_matches_cryptography(secret: bytes, info: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from protocols.secagg._crypto import hkdf_sha256

    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    assert hkdf_sha256(secret, info) == want


def test_parallel_workers_give_the_same_sum() -> None:
    from tests.protocols.contract import make_inputs

    inputs = make_inputs(7, 33, seed=4)
    cfg = RoundConfig(threshold=4)
    plan = {sorted(inputs)[1]: Stage.SHARE_KEYS, sorted(inputs)[4]: Stage.UNMASK}
    res = SecAggAggregator(neighbors=6, workers=2).aggregate(inputs, cfg, plan)  # complete: t' = 5 of 7
    want = np.sum([v for c, v in inputs.items() if c != sorted(inputs)[1]], axis=0)
    np.testing.assert_allclose(res.total, want, atol=7 * 2 / 2**28)
    with pytest.raises(ConfigError, match=r"os\.urandom"):
        SecAggAggregator(workers=2, randbytes=pinned("x"))


# ---- client-enforced security parameters (issue 14) --------------------------------------------
def _forged_setup(rnd: Round, cid: int, **changes: object) -> bytes:
    setup = m.Setup.decode(rnd.inbox[cid])
    fields = {k: getattr(setup, k) for k in setup.__dataclass_fields__}
    return m.Setup(**{**fields, **changes}).encode()


@pytest.mark.parametrize(("changes", "why"), [
    ({"share_threshold": 1}, "share threshold 1 is below 3"),
    ({"threshold": 1, "share_threshold": 1}, "threshold 1 is below this client's floor 2"),
    ({"degree": 2, "share_threshold": 2}, "degree 2 is too small for 4 clients"),
    ({"graph_seed": bytes(32)}, "graph seed is not the one derived"),
])
@pytest.mark.parametrize("malicious", [True, False])
def test_client_refuses_a_weakened_setup_and_stays_refused(
    changes: dict[str, object], why: str, malicious: bool
) -> None:
    rnd = Round(malicious=malicious)
    cid = IDS[0]
    client = rnd.clients[cid]
    with pytest.raises(IntegrityError, match=why):
        client.advertise(_forged_setup(rnd, cid, **changes))
    assert client.stage is None
    with pytest.raises(StageError):
        client.advertise(rnd.inbox[cid])  # not even the honest setup is answered now


def test_client_computes_the_share_threshold_itself() -> None:
    """t' is a strict majority of the neighbourhood in the malicious model, whatever the server says."""
    rnd = Round(malicious=True, threshold=2)  # 4 clients: t' = max(2, 3) = 3
    cid = IDS[0]
    assert m.Setup.decode(rnd.inbox[cid]).share_threshold == 3
    with pytest.raises(IntegrityError, match="share threshold 2 is below 3"):
        rnd.clients[cid].advertise(_forged_setup(rnd, cid, share_threshold=2))
    rnd.clients[IDS[1]].advertise(_forged_setup(rnd, IDS[1], share_threshold=4))  # stronger is accepted


def test_policy_pins_ring_clip_and_wrap() -> None:
    rnd = Round(malicious=False)
    cid = IDS[0]
    setup = m.Setup.decode(rnd.inbox[cid])
    pinned_policy = ClientPolicy(ring_bits=32, clip_range=1.0, wrap=False)
    for changes, why in (({"ring_bits": 40}, "ring_bits 40 differs"), ({"clip_range": 0.5}, "clip_range 0.5"),
                         ({"wrap": True}, "wrap True differs")):
        client = SecAggClient(cid, rnd.inputs[cid], malicious=False, round_id=5, policy=pinned_policy)
        with pytest.raises(IntegrityError, match=why):
            client.advertise(_forged_setup(rnd, cid, **changes))
    # unpinned (the default policy), a wider ring without overflow is accepted
    SecAggClient(cid, rnd.inputs[cid], malicious=False, round_id=5).advertise(
        _forged_setup(rnd, cid, ring_bits=40, value_bits=setup.value_bits))


def test_policy_degree_floor_and_corruption_bound() -> None:
    ids = list(range(1, 41))
    cfg = RoundConfig(threshold=20, round_id=3)
    server = SecAggServer(cfg, ids, L, neighbors=6, malicious=False)
    setup = server.setup()[1]
    vec = np.zeros(L)
    with pytest.raises(IntegrityError, match="degree 6 is too small for 40 clients"):
        SecAggClient(1, vec, malicious=False).advertise(setup)  # default: Bell et al.'s bound, gamma = 0.05
    fixed = ClientPolicy(min_degree=6, degree_bound=False)  # an operator's own fixed degree
    SecAggClient(1, vec, malicious=False, policy=fixed).advertise(setup)
    higher = ClientPolicy(min_degree=8, degree_bound=False)
    with pytest.raises(IntegrityError, match="degree 6 is below this client's floor 8"):
        SecAggClient(1, vec, malicious=False, policy=higher).advertise(setup)
    with pytest.raises(ConfigError, match="corruption_rate"):
        ClientPolicy(corruption_rate=0.5)


def test_choose_degree_meets_the_bound_the_clients_check() -> None:
    for n, threshold in ((100, 50), (1000, 500), (5000, 1000)):
        k = choose_degree(n, 0.05, 0.05, threshold=threshold, malicious=True)
        assert degree_is_secure(n, k, threshold, malicious=True, corruption_rate=0.05)
        assert k == n - 1 or not degree_is_secure(n, 4, threshold, malicious=True, corruption_rate=0.05)


def test_graph_seed_is_derived_from_the_round() -> None:
    a = SecAggServer(RoundConfig(round_id=5), IDS, L)
    assert a.graph_seed == graph_seed(5, IDS) == graph_seed(5, list(reversed(IDS)))
    assert graph_seed(6, IDS) != a.graph_seed and graph_seed(5, IDS[:3]) != a.graph_seed


# ---- terminal state for every failure ------------------------------------------------------------
@pytest.mark.parametrize("key", ["c_pk", "s_pk"])
def test_low_order_public_key_is_an_integrity_error(key: str) -> None:
    """An all-zero X25519 key makes cryptography raise ValueError; the client turns it into a refusal."""
    rnd = Round(malicious=False)
    rnd.advance(1)
    cid = IDS[0]
    bc = m.AdvertiseBroadcast.decode(rnd.inbox[cid])
    first = bc.advertisements[0]
    zero = (dataclasses.replace(first, c_pk=bytes(32)) if key == "c_pk"
            else dataclasses.replace(first, s_pk=bytes(32)))
    evil = m.AdvertiseBroadcast((zero, *bc.advertisements[1:])).encode()
    client = rnd.clients[cid]
    if key == "c_pk":
        with pytest.raises(IntegrityError, match="X25519 peer key refused"):
            client.share_keys(evil)
    else:  # the s key is used one stage later, to expand the pairwise mask
        rnd.inbox[cid] = evil
        rnd.advance(1)
        with pytest.raises(IntegrityError, match="X25519 peer key refused"):
            client.masked_input(rnd.inbox[cid])
    assert client.stage is None
    with pytest.raises(StageError):
        client.unmask(b"")


def test_a_replayed_stage_makes_the_client_terminal() -> None:
    rnd = Round(malicious=True)
    rnd.advance(1)
    cid = IDS[0]
    client = rnd.clients[cid]
    with pytest.raises(StageError):
        client.advertise(rnd.inbox[cid])  # the setup stage again
    assert client.stage is None
    with pytest.raises(StageError):
        client.share_keys(rnd.inbox[cid])


def test_server_is_terminal_after_an_integrity_failure() -> None:
    rnd = Round(malicious=False)
    replies = rnd.client_step()
    forged = dict(replies)
    forged[IDS[0]] = replies[IDS[1]]
    with pytest.raises(IntegrityError):
        rnd.server.receive_advertisements(forged)
    assert rnd.server.stage is None
    with pytest.raises(StageError):
        rnd.server.receive_advertisements(replies)


@pytest.mark.parametrize("malicious", [True, False])
def test_forked_workers_give_the_ring_sum_of_one_process(malicious: bool) -> None:
    # same rounding streams, so the same ring sum (and decoded total) wherever the clients run
    from tests.protocols.contract import make_inputs

    inputs = make_inputs(9, 40, seed=6)
    cfg = RoundConfig(threshold=5, round_id=3)
    plan = {sorted(inputs)[2]: Stage.MASKED_INPUT, sorted(inputs)[5]: Stage.UNMASK}
    results = [
        SecAggPlusAggregator(neighbors=6, malicious=malicious, workers=w, rng=np.random.default_rng(11))
        .aggregate(inputs, cfg, plan)
        for w in (1, 2, 3)
    ]
    for res in results[1:]:
        np.testing.assert_array_equal(res.total, results[0].total)
        assert res.survivors == results[0].survivors
        assert res.bytes_up == results[0].bytes_up


class _Echo:
    """A stand-in client for the runner: echoes its message, or fails for one id."""

    def __init__(self, cid: int, bad: int) -> None:
        self.cid, self.bad = cid, bad

    def go(self, message: bytes) -> bytes:
        if self.cid == self.bad:
            raise IntegrityError(f"client {self.cid} refuses")
        return message + bytes([self.cid])


@pytest.mark.parametrize("bad", [None, 0, 1, 5])  # 0: a client of this process; 1 and 5: of a worker
def test_forked_runner_answers_for_every_client_or_raises_the_clients_error(bad: int | None) -> None:
    from protocols.secagg._runner import ForkedClients, fork_available

    if not fork_available():
        pytest.skip("no fork on this platform")
    ids = list(range(9))
    runner = ForkedClients(lambda c: _Echo(c, -1 if bad is None else bad), ids, 3)  # type: ignore[arg-type,return-value]
    try:
        inbox = {c: b"m" for c in ids}
        if bad is None:
            replies, _ = runner.call("go", inbox)
            assert replies == {c: b"m" + bytes([c]) for c in ids}
            assert list(replies) == ids
            replies, _ = runner.call("go", {2: b"x", 4: b"y"})  # the pipes stay in step
            assert replies == {2: b"x\x02", 4: b"y\x04"}
        else:
            with pytest.raises(IntegrityError, match=f"client {bad} refuses"):
                runner.call("go", inbox)
            replies, _ = runner.call("go", {c: b"z" for c in ids if c != bad})  # still in step
            assert set(replies) == set(ids) - {bad}
    finally:
        runner.close()

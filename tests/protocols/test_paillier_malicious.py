"""Packed Paillier against a malicious server: signed ciphertexts, consistency round, verified decryption."""

from __future__ import annotations

import copy
import dataclasses
import functools
import struct
from collections.abc import Mapping

import numpy as np
import pytest

from protocols import (
    AggregationAborted,
    Aggregator,
    ConfigError,
    IntegrityError,
    ProtocolError,
    RoundConfig,
    Stage,
    StageError,
    get_aggregator,
)
from protocols.paillier import PaillierAggregator, PaillierClient, PaillierServer, RandomnessPool
from protocols.paillier import aggregator as pa
from protocols.paillier import messages as pm
from protocols.paillier.aggregator import (
    Ciphertexts,
    consistency_threshold,
    decode_ciphertexts,
    encode_aggregate,
    encode_verified_aggregate,
    round_layout,
)
from protocols.paillier.raw import PrivateKey
from protocols.wire import frame, unframe
from tests.protocols.contract import AggregatorContract, make_inputs
from tests.protocols.test_paillier import small_key


class TestPaillierMaliciousContract(AggregatorContract):
    """The shared contract in the malicious-server model (t' = n // 2 + 1 signers needed)."""
    wraps = False

    exhaustive_n = 3

    def make_aggregator(self) -> Aggregator:
        return PaillierAggregator(keypair=small_key(), rng=np.random.default_rng(0), malicious=True)


# ---- the aggregator ------------------------------------------------------------------------------
def test_malicious_round_gives_the_honest_rounds_sum() -> None:
    inputs = make_inputs(7, 300, seed=2)
    cfg = RoundConfig(threshold=3)
    honest = PaillierAggregator(keypair=small_key(), rng=np.random.default_rng(5)).aggregate(inputs, cfg)
    checked = PaillierAggregator(keypair=small_key(), rng=np.random.default_rng(5), malicious=True)
    result = checked.aggregate(inputs, cfg)
    np.testing.assert_array_equal(result.total, honest.total)
    assert result.survivors == honest.survivors


def test_registry_passes_the_malicious_option() -> None:
    agg = get_aggregator("paillier", keypair=small_key(), malicious=True)
    assert isinstance(agg, PaillierAggregator) and agg.malicious
    assert not PaillierAggregator(keypair=small_key()).malicious  # honest-but-curious stays the default


def test_dropout_at_consistency_completes_with_t_prime_signers_and_aborts_below() -> None:
    inputs = make_inputs(10, 40, seed=3)
    ids = sorted(inputs)
    cfg = RoundConfig(threshold=4)
    assert consistency_threshold(10) == 6
    plan = dict.fromkeys(ids[:4], Stage.CONSISTENCY)  # 6 of the 10 senders sign: exactly t'
    agg = PaillierAggregator(keypair=small_key(), malicious=True)
    result = agg.aggregate(inputs, cfg, plan)
    want = np.sum([inputs[c] for c in ids], axis=0)  # the 4 sent their ciphertexts: they are in the sum
    np.testing.assert_allclose(result.total, want, atol=10 * 2.0 / 2**27)
    assert result.survivors == frozenset(ids)
    assert agg.last_decryptor == ids[4]  # the first key holder that signed S
    plan = dict.fromkeys(ids[:5], Stage.CONSISTENCY)  # 5 < t' = 6 although threshold is 4
    with pytest.raises(AggregationAborted, match=r"only 5 consistency signatures.*t' is 6") as info:
        PaillierAggregator(keypair=small_key(), malicious=True).aggregate(inputs, cfg, plan)
    assert info.value.threshold == 6
    # the honest-but-curious model needs no signatures: the same plan completes
    PaillierAggregator(keypair=small_key()).aggregate(inputs, cfg, plan)


def test_decryptor_downloads_every_members_ciphertexts() -> None:
    key = small_key()
    inputs = make_inputs(6, 2000, seed=4)
    cfg = RoundConfig(threshold=3)
    honest_agg = PaillierAggregator(keypair=key)
    honest = honest_agg.aggregate(inputs, cfg)
    checked_agg = PaillierAggregator(keypair=key, malicious=True)
    checked = checked_agg.aggregate(inputs, cfg)
    d = checked_agg.last_decryptor
    assert d is not None and d == honest_agg.last_decryptor
    _, layout = round_layout(6, cfg, key.public)
    vector = layout.ciphertexts_for(2000) * key.public.ciphertext_bytes
    extra = checked.bytes_down[d] - honest.bytes_down[d]
    assert (
        5 * vector <= extra <= 5 * vector + 6 * 64 + 6 * 72 + 200
    )  # |S| - 1 more vectors, 2 signatures each
    others = [c for c in inputs if c != d]
    assert all(checked.bytes_down[c] - honest.bytes_down[c] < 100 for c in others)  # S only
    assert all(64 < checked.bytes_up[c] - honest.bytes_up[c] < 200 for c in inputs)  # two signatures


def test_client_needs_n_clients_in_the_malicious_model() -> None:
    agg = PaillierAggregator(keypair=small_key())
    agg.enroll(1)
    with pytest.raises(ConfigError, match="n_clients"):
        PaillierClient(1, agg._identities[1], agg.directory, 0, malicious=True)


# ---- sans-IO parties: a round up to the verified aggregate ------------------------------------------
@dataclasses.dataclass
class Round:
    key: PrivateKey
    clients: dict[int, PaillierClient]
    server: PaillierServer
    ciphertexts: dict[int, bytes]
    cfg: RoundConfig
    agg: PaillierAggregator

    def request(self, survivors: tuple[int, ...], round_id: int | None = None) -> bytes:
        rid = self.cfg.round_id if round_id is None else round_id
        return frame(
            pm.KIND_CONSISTENCY_REQUEST, struct.pack(f">QI{len(survivors)}Q", rid, len(survivors), *survivors)
        )

    def sign(self, survivors: tuple[int, ...], who: list[int]) -> dict[int, bytes]:
        return {
            c: unframe(
                self.clients[c].consistency(self.request(survivors), self.cfg.threshold),
                pm.KIND_CONSISTENCY_SIGNATURE,
            )[16:]
            for c in who
        }

    def blocks(self, messages: Mapping[int, bytes] | None = None) -> dict[int, Ciphertexts]:
        return {c: decode_ciphertexts(m) for c, m in (messages or self.ciphertexts).items()}


def make_round(
    n: int = 5,
    threshold: int = 3,
    round_id: int = 0,
    malicious: bool = True,
    agg: PaillierAggregator | None = None,
    length: int = 6,
) -> Round:
    key = small_key()
    agg = agg or PaillierAggregator(keypair=key)
    ids = list(range(1, n + 1))
    for c in ids:
        agg.enroll(c)
    cfg = RoundConfig(threshold=threshold, round_id=round_id)
    clients = {
        c: PaillierClient(c, agg._identities[c], agg.directory, round_id, malicious=malicious, n_clients=n)
        for c in ids
    }
    server = PaillierServer(agg.directory, cfg, n, malicious=malicious)
    listing = server.collect_adverts({c: x.advertise() for c, x in clients.items()})
    for x in clients.values():
        x.receive_adverts(listing)
    deliveries = server.relay_key(1, clients[1].share_key(key))
    server.collect_acks({c: clients[c].receive_key(m) for c, m in deliveries.items()})
    fp, layout = round_layout(n, cfg, key.public)
    cts = {
        c: x.masked_input(
            np.full(length, 0.25 * c / n), fp, layout, np.random.default_rng(c), RandomnessPool(key.public)
        )
        for c, x in clients.items()
    }
    server.collect_ciphertexts(cts)
    return Round(key, clients, server, cts, cfg, agg)


def test_sans_io_round_decrypts_the_sum_once() -> None:
    r = make_round()
    everyone = (1, 2, 3, 4, 5)
    request = r.server.consistency_request()
    r.server.collect_signatures({c: r.clients[c].consistency(request, 3) for c in everyone})
    aggregate = r.server.aggregate_message()
    fp, layout = round_layout(5, r.cfg, r.key.public)
    total = r.server.decode_sum(r.clients[2].decrypt(aggregate, 3), fp, layout, 6)
    np.testing.assert_allclose(total, np.full(6, 0.25 * 15 / 5), atol=5 * fp.step)
    with pytest.raises(IntegrityError, match="round 0: client 2 already decrypted a sum in this round"):
        r.clients[2].decrypt(aggregate, 3)
    with pytest.raises(IntegrityError, match="round 0: client 3 already signed a survivor set"):
        r.clients[3].consistency(request, 3)
    with pytest.raises(IntegrityError, match="client 3 refuses decrypt: it failed earlier"):
        r.clients[3].decrypt(aggregate, 3)  # terminal after its refusal
    again = r.server.decode_sum(r.clients[4].decrypt(aggregate, 3), fp, layout, 6)  # another decryptor
    np.testing.assert_array_equal(again, total)


def _tamper_cases(r: Round) -> tuple[bytes, dict[str, tuple[int, bytes, str]]]:
    """The honest verified aggregate, and name -> (decryptor, tampered message, expected error text)."""
    everyone = (1, 2, 3, 4, 5)
    sigs = r.sign(everyone, list(everyone))
    blocks = r.blocks()
    rid, count = r.cfg.round_id, blocks[1].count
    width = r.key.public.ciphertext_bytes

    def verified(
        survivors: tuple[int, ...] = everyone,
        s: Mapping[int, bytes] = sigs,
        b: Mapping[int, Ciphertexts] = blocks,
        round_id: int = rid,
    ) -> bytes:
        return encode_verified_aggregate(round_id, survivors, s, b, count)

    flipped = dict(blocks)
    raw = bytearray(blocks[4].block)
    raw[3] ^= 1
    flipped[4] = dataclasses.replace(blocks[4], block=bytes(raw))
    swapped = dict(blocks)
    swapped[4] = dataclasses.replace(blocks[4], signature=blocks[5].signature)
    zero = dict(blocks)
    zero[3] = dataclasses.replace(blocks[3], block=b"\x00" * (width - 1) + b"\x01" + blocks[3].block[width:])
    return verified(), {
        "honest-model aggregate": (
            2,
            encode_aggregate(rid, everyone, [int(v) for v in blocks[5].values(width)], width),
            "refuses to decrypt an unverified aggregate",
        ),
        "single client": (2, verified((5,), b={5: blocks[5]}), "not the survivor set it signed"),
        "subset of S": (
            2,
            verified((1, 2, 3, 5), b={c: blocks[c] for c in (1, 2, 3, 5)}),
            "not the survivor set it signed",
        ),
        "altered ciphertexts": (2, verified(b=flipped), "round 0: client 2 .*ciphertexts of client 4 failed"),
        "another client's signature": (
            2,
            verified(b=swapped),
            "ciphertexts of client 4 failed authentication",
        ),
        "ciphertext replaced by 1 (an encryption of 0)": (
            2,
            verified(b=zero),
            "ciphertexts of client 3 failed",
        ),
        "too few signatures": (
            2,
            verified(s={c: sigs[c] for c in (1,)}),
            "2 consistency signatures.*t' is 3",
        ),
        "forged signature": (
            2,
            verified(s={**sigs, 4: sigs[5]}),
            "consistency signature of client 4 does not",
        ),
        "other round": (2, verified(round_id=rid + 1), "refuses to decrypt an aggregate of round 1"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "honest-model aggregate",
        "single client",
        "subset of S",
        "altered ciphertexts",
        "another client's signature",
        "ciphertext replaced by 1 (an encryption of 0)",
        "too few signatures",
        "forged signature",
        "other round",
    ],
)
def test_decryptor_refuses_every_tampered_aggregate(case: str) -> None:
    r = make_round()
    good, cases = _tamper_cases(r)
    decryptor, message, error = cases[case]
    with pytest.raises(IntegrityError, match=error):
        r.clients[decryptor].decrypt(message, 3)
    with pytest.raises(IntegrityError, match=f"client {decryptor} refuses decrypt: it failed earlier"):
        r.clients[decryptor].decrypt(good, 3)  # terminal: not even the real sum is decrypted now
    r.clients[decryptor + 1].decrypt(good, 3)  # another signer decrypts the real sum


def test_ciphertexts_replayed_from_an_earlier_round_are_refused() -> None:
    agg = PaillierAggregator(keypair=small_key())
    earlier = make_round(round_id=4, agg=agg)
    now = make_round(round_id=5, agg=agg)
    rest = (1, 2, 3, 4)  # the server claims client 5 dropped in round 5 and replays round 4's ciphertexts
    sigs = now.sign(rest, list(rest))
    message = encode_verified_aggregate(5, rest, sigs, earlier.blocks(), earlier.blocks()[1].count)
    with pytest.raises(
        IntegrityError, match=r"round 5: client 1 .*ciphertexts of client 1 failed authentication"
    ):
        now.clients[1].decrypt(message, 3)
    with pytest.raises(IntegrityError, match="ciphertexts of client 2 failed"):  # the server checks them too
        now.server.collect_ciphertexts(
            {
                **now.ciphertexts,
                2: frame(
                    pm.KIND_SIGNED_CIPHERTEXTS,
                    unframe(earlier.ciphertexts[2], pm.KIND_SIGNED_CIPHERTEXTS)[:8]
                    + struct.pack(">Q", 5)
                    + unframe(earlier.ciphertexts[2], pm.KIND_SIGNED_CIPHERTEXTS)[16:],
                ),
            }
        )


def test_split_view_cannot_reach_t_prime_twice() -> None:
    r = make_round(n=6, threshold=3)  # t' = 4
    s1, s2 = (1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5)
    sig1 = r.sign(s1, [1, 2, 3, 6])
    sig2 = r.sign(s2, [4, 5])
    blocks = r.blocks()
    count = blocks[1].count
    r.clients[1].decrypt(encode_verified_aggregate(0, s1, sig1, blocks, count), 3)
    attempts = [  # (decryptor, signatures on S2, refusal); each on a copy of the decryptor's state
        (4, sig2, "client 4 refuses to decrypt: 2 consistency signatures"),
        (4, {6: sig1[6], **sig2}, "signature of client 6, not in the survivor set"),
        (5, {1: sig1[1], **sig2}, r"client 5 .*signature of client 1 does not sign"),
        (2, {1: sig1[1], **sig2}, r"client 2 refuses .*not the survivor set it signed"),
    ]
    for decryptor, sigs, error in attempts:
        client = copy.deepcopy(r.clients[decryptor])
        with pytest.raises(IntegrityError, match=error):
            client.decrypt(encode_verified_aggregate(0, s2, sigs, blocks, count), 3)
        assert client.failed


@pytest.mark.parametrize(
    ("survivors", "error"),
    [
        ((1, 2, 3, 4), "without itself"),
        ((5, 3, 4), "not sorted and unique"),
        ((4, 5), "of 2 clients"),
        ((2, 3, 4, 5, 9), "non-advertiser 9"),
    ],
)
def test_clients_refuse_to_sign_a_bad_survivor_set(survivors: tuple[int, ...], error: str) -> None:
    r = make_round(n=5, threshold=2)  # t' = 3
    other = copy.deepcopy(r.clients[5])
    with pytest.raises(IntegrityError, match=f"round 0: client 5 .*{error}"):
        r.clients[5].consistency(r.request(survivors), 2)
    with pytest.raises(IntegrityError, match="client 5 refuses consistency: it failed earlier"):
        r.clients[5].consistency(r.request((1, 2, 3, 4, 5)), 2)  # terminal: not even the honest S
    with pytest.raises(
        IntegrityError, match="round 0: client 5 was asked to sign the survivor set of round 3"
    ):
        other.consistency(r.request((1, 2, 3, 4, 5), round_id=3), 2)


def test_decrypt_without_a_signed_survivor_set_is_refused() -> None:
    r = make_round()
    blocks = r.blocks()
    sigs = r.sign((1, 2, 3, 4, 5), [1, 2, 3])
    message = encode_verified_aggregate(0, (1, 2, 3, 4, 5), sigs, blocks, blocks[1].count)
    with pytest.raises(IntegrityError, match="round 0: client 4 has signed no survivor set"):
        r.clients[4].decrypt(message, 3)


def test_server_checks_signatures_and_refuses_unsigned_ciphertexts() -> None:
    r = make_round()
    plain = Ciphertexts(2, 0, r.blocks()[2].count, r.blocks()[2].block).encode()
    refusing = copy.deepcopy(r.server)
    with pytest.raises(IntegrityError, match="client 2 sent unsigned ciphertexts"):
        refusing.collect_ciphertexts({**r.ciphertexts, 2: plain})
    with pytest.raises(IntegrityError, match="server refuses consistency_request: it failed earlier"):
        refusing.consistency_request()
    request = r.server.consistency_request()
    good = {c: r.clients[c].consistency(request, 3) for c in (1, 2, 3)}
    bad = bytearray(good[3])
    bad[-1] ^= 1
    with pytest.raises(IntegrityError, match="consistency signature of client 3 does not sign"):
        r.server.collect_signatures({**good, 3: bytes(bad)})
    honest = PaillierServer(r.agg.directory, r.cfg, 5)
    with pytest.raises(StageError):
        honest.consistency_request()


def test_honest_mode_client_has_no_consistency_stage_and_sends_the_old_message() -> None:
    r = make_round(malicious=False)
    assert all(pa.kind_of(m) == pm.KIND_CIPHERTEXTS for m in r.ciphertexts.values())
    with pytest.raises(StageError, match="malicious-server model"):
        r.clients[2].consistency(r.request((1, 2, 3, 4, 5)), 3)


# ---- key substitution and bundle tampering: refused in both models -------------------------------
def _deliveries(
    malicious: bool, round_id: int = 0, agg: PaillierAggregator | None = None
) -> tuple[dict[int, PaillierClient], dict[int, bytes]]:
    key = small_key()
    agg = agg or PaillierAggregator(keypair=key)
    for c in (1, 2, 3):
        agg.enroll(c)
    clients = {
        c: PaillierClient(c, agg._identities[c], agg.directory, round_id, malicious=malicious, n_clients=3)
        for c in (1, 2, 3)
    }
    server = PaillierServer(
        agg.directory, RoundConfig(threshold=2, round_id=round_id), 3, malicious=malicious
    )
    listing = server.collect_adverts({c: x.advertise() for c, x in clients.items()})
    for x in clients.values():
        x.receive_adverts(listing)
    return clients, server.relay_key(1, clients[1].share_key(key))


def _split(message: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    payload = unframe(message, pm.KIND_KEY_DELIVERY)
    (nlen,) = struct.unpack_from(">H", payload, 16)
    return (
        payload[:16],
        payload[18 : 18 + nlen],
        payload[18 + nlen : 18 + nlen + 64],
        payload[18 + nlen + 66 :],
    )


def _join(ids: bytes, n: bytes, sig: bytes, sealed: bytes) -> bytes:
    return frame(
        pm.KIND_KEY_DELIVERY,
        ids + struct.pack(">H", len(n)) + n + sig + struct.pack(">H", len(sealed)) + sealed,
    )


@functools.cache
def other_key() -> PrivateKey:
    from protocols.paillier import generate_keypair

    return generate_keypair(512)


@pytest.mark.parametrize("malicious", [False, True])
@pytest.mark.parametrize("case", ["public key", "holder id", "recipient", "earlier round", "bit flip"])
def test_key_delivery_bindings(malicious: bool, case: str) -> None:
    agg = PaillierAggregator(keypair=small_key())
    _, earlier = _deliveries(malicious, round_id=3, agg=agg)
    clients, deliveries = _deliveries(malicious, round_id=4, agg=agg)
    ids, n, sig, sealed = _split(deliveries[2])
    if case == "public key":  # the server's own modulus under the holder's signature
        message, error = (
            _join(ids, other_key().public.n_bytes(), sig, sealed),
            "public key of holder 1 failed",
        )
    elif case == "holder id":
        message, error = _join(struct.pack(">QQ", 3, 4), n, sig, sealed), "public key of holder 3 failed"
    elif case == "recipient":  # client 3's sealed copy delivered to client 2
        message, error = _join(ids, n, sig, _split(deliveries[3])[3]), "private key from client 1 to 2 failed"
    elif case == "earlier round":  # client 2's copy from round 3 under round 4's header and signature
        message, error = _join(ids, n, sig, _split(earlier[2])[3]), "private key from client 1 to 2 failed"
    else:
        flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
        message, error = _join(ids, n, sig, flipped), "private key from client 1 to 2 failed"
    with pytest.raises(IntegrityError, match=f"round 4: {error}"):
        clients[2].receive_key(message)
    with pytest.raises(IntegrityError, match="client 2 refuses receive_key: it failed earlier"):
        clients[2].receive_key(deliveries[2])  # terminal: it takes no key in this round any more
    assert clients[2].keypair is None
    clients[3].receive_key(deliveries[3])


def test_substituted_advert_key_is_refused_in_both_models() -> None:
    for malicious in (False, True):
        agg = PaillierAggregator(keypair=small_key())
        for c in (1, 2):
            agg.enroll(c)
        clients = {
            c: PaillierClient(c, agg._identities[c], agg.directory, 0, malicious=malicious, n_clients=2)
            for c in (1, 2)
        }
        adverts = {c: unframe(x.advertise(), pm.KIND_ADVERT) for c, x in clients.items()}
        forged = adverts[2][:16] + bytes(32) + adverts[2][48:]
        listing = frame(pm.KIND_ADVERT_LIST, struct.pack(">I", 2) + adverts[1] + forged)
        with pytest.raises(IntegrityError, match="advert of client 2 failed authentication"):
            clients[1].receive_adverts(listing)


# ---- malformed new messages raise protocol errors only ---------------------------------------------
def test_truncated_and_flipped_verified_aggregates_raise_protocol_errors() -> None:
    r = make_round()
    everyone = (1, 2, 3, 4, 5)
    sigs = r.sign(everyone, list(everyone))
    original = encode_verified_aggregate(0, everyone, sigs, r.blocks(), r.blocks()[1].count)
    bad = [frame(pm.KIND_VERIFIED_AGGREGATE, original[9:cut])
           for cut in range(9, len(original), max(1, len(original) // 40))]
    for pos in range(9, len(original), max(1, len(original) // 40)):
        garbled = bytearray(original)
        garbled[pos] ^= 0x40
        bad.append(bytes(garbled))
    for message in bad:
        client = copy.deepcopy(r.clients[2])
        with pytest.raises(ProtocolError):
            client.decrypt(message, 3)
        with pytest.raises(IntegrityError, match="refuses decrypt: it failed earlier"):
            client.decrypt(original, 3)
    r.clients[2].decrypt(original, 3)  # the untouched client decrypts the real aggregate
    fresh = make_round()
    request = fresh.request(everyone)
    for cut in range(9, len(request)):
        client = copy.deepcopy(fresh.clients[2])
        with pytest.raises(ProtocolError):
            client.consistency(frame(pm.KIND_CONSISTENCY_REQUEST, request[9:cut]), 3)
        with pytest.raises(IntegrityError, match="refuses consistency: it failed earlier"):
            client.consistency(request, 3)
    fresh.clients[2].consistency(request, 3)

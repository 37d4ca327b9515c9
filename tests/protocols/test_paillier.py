"""Packed Paillier: the aggregator contract, known answers, packing, randomness pool, key transport."""

from __future__ import annotations

import functools
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import (
    AggregationAborted,
    Aggregator,
    ConfigError,
    DecodeError,
    IntegrityError,
    ProtocolError,
    RoundConfig,
    Stage,
    StageError,
)
from protocols.paillier import (
    PaillierAggregator,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    SlotLayout,
    generate_keypair,
)
from protocols.paillier import keys as keymod
from protocols.paillier.packing import pack, pack_offset, unpack, unpack_sum
from protocols.paillier.raw import (
    encrypt_with_obfuscator,
    obfuscator,
    obfuscator_crt,
    raw_add,
    raw_decrypt,
    raw_encrypt,
)
from protocols.wire import frame, unframe
from tests.protocols.contract import AggregatorContract, make_inputs
from tests.vectors import vectors

TEST_KEY_BITS = 512  # tests only; the library default is 2048


@functools.cache
def small_key() -> PrivateKey:
    """One small key per test session (generating is the slow part)."""
    return generate_keypair(TEST_KEY_BITS)


def counter_randbelow(seed: int = 1) -> Any:
    """A deterministic ``randbelow`` for tests (NOT random)."""
    state = [seed]

    def randbelow(k: int) -> int:
        state[0] = (state[0] * 6364136223846793005 + 1442695040888963407) % 2**64
        return (state[0] * 0x9E3779B97F4A7C15**4) % k

    return randbelow


class TestPaillierContract(AggregatorContract):
    wraps = False
    exhaustive_n = 3

    def make_aggregator(self) -> Aggregator:
        return PaillierAggregator(keypair=small_key(), rng=np.random.default_rng(0))


class TestPaillierContractOnlineRandomness(AggregatorContract):
    """Same contract with randomness computed inside encryption and the public-key path."""
    wraps = False

    exhaustive_n = 2

    def make_aggregator(self) -> Aggregator:
        return PaillierAggregator(
            keypair=small_key(), precompute=False, key_holder_randomness=False, rng=np.random.default_rng(1)
        )


# ---- known answers ----------------------------------------------------------------------------


@vectors("paillier")
def test_raw_known_answers(vector: dict[str, Any]) -> None:
    key = PrivateKey.from_factors(vector["p"], vector["q"])
    assert key.public.n == vector["n"]
    c = raw_encrypt(key.public, vector["m"], vector["r"])
    assert int(c) == int(vector["ciphertext"])
    assert raw_decrypt(key, c) == vector["m"]


@vectors("paillier_packing")
def test_packing_known_answers(vector: dict[str, Any]) -> None:
    key = PrivateKey.from_factors(vector["p"], vector["q"])
    layout = SlotLayout.for_sum(vector["n_clients"], vector["value_bits"], key.public.plaintext_bits)
    assert (layout.slot_bits, layout.slots, layout.offset) == (
        vector["slot_bits"],
        vector["slots"],
        vector["offset"],
    )
    length = len(vector["values"][0])
    product = None
    for values, plaintexts, rs, cts in zip(
        vector["values"], vector["plaintexts"], vector["r"], vector["ciphertexts"], strict=True
    ):
        packed = pack_offset(layout, np.array(values))
        assert packed == [int(x) for x in plaintexts]
        ours = [raw_encrypt(key.public, m, r) for m, r in zip(packed, rs, strict=True)]
        assert [int(c) for c in ours] == [int(c) for c in cts]
        product = (
            ours
            if product is None
            else [raw_add(key.public, a, b) for a, b in zip(product, ours, strict=True)]
        )
    assert product is not None
    assert [int(c) for c in product] == [int(c) for c in vector["product"]]
    decrypted = [int(raw_decrypt(key, c)) for c in product]
    assert decrypted == [int(m) for m in vector["decrypted"]]
    assert unpack_sum(layout, decrypted, length, vector["n_clients"]).tolist() == vector["sums"]


def test_raw_matches_phe_on_a_real_key() -> None:
    from phe import paillier

    key = small_key()
    phe_pub = paillier.PaillierPublicKey(int(key.public.n))
    phe_priv = paillier.PaillierPrivateKey(phe_pub, int(key.p), int(key.q))
    rb = counter_randbelow(7)
    for _ in range(5):
        m, r = rb(int(key.public.n)), rb(int(key.public.n) - 1) + 1
        c = raw_encrypt(key.public, m, r)
        assert int(c) == phe_pub.raw_encrypt(m, r_value=r)
        assert raw_decrypt(key, c) == m == phe_priv.raw_decrypt(int(c))


def test_crt_obfuscator_is_an_nth_residue_and_decrypts() -> None:
    key = small_key()
    n, nsq = key.public.n, key.public.nsquare
    phi = (key.p - 1) * (key.q - 1)
    rb = counter_randbelow(3)
    for _ in range(5):
        z = obfuscator_crt(key, rb(int(key.p) - 1) + 1, rb(int(key.q) - 1) + 1)
        assert pow(int(z), int(phi), int(nsq)) == 1  # order divides phi(n): an n-th residue
        m = rb(int(n))
        assert raw_decrypt(key, encrypt_with_obfuscator(key.public, m, z)) == m


def test_raw_refuses_bad_inputs() -> None:
    key = small_key()
    with pytest.raises(ConfigError):
        obfuscator(key.public, 0)
    with pytest.raises(ConfigError):
        obfuscator(key.public, int(key.p))  # not in Z_n^*
    with pytest.raises(ConfigError):
        encrypt_with_obfuscator(key.public, int(key.public.n), 1)
    with pytest.raises(DecodeError):
        raw_decrypt(key, 0)
    with pytest.raises(ConfigError):
        PrivateKey(PublicKey(15), 3, 7)


# ---- packing ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    value_bits=st.integers(2, 40),
    n=st.integers(1, 300),
    length=st.integers(1, 300),
    plaintext_bits=st.sampled_from([63, 127, 511, 2047]),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_unpack_sum_round_trip(
    value_bits: int, n: int, length: int, plaintext_bits: int, seed: int
) -> None:
    try:
        layout = SlotLayout.for_sum(n, value_bits, plaintext_bits)
    except ConfigError:
        return
    rng = np.random.default_rng(seed)
    clients = min(n, 5)
    values = rng.integers(-layout.offset, layout.offset + 1, size=(clients, length))
    # the worst case for carries: every client at the extreme
    values[0, 0] = layout.offset
    packed = [pack_offset(layout, v) for v in values]
    assert all(int(m).bit_length() <= plaintext_bits for ms in packed for m in ms)
    sums = [sum(col) for col in zip(*packed, strict=True)]
    assert unpack_sum(layout, sums, length, clients).tolist() == values.sum(axis=0).tolist()


@pytest.mark.parametrize("sign", [1, -1])
def test_64_bit_slots_sum_4096_clients_at_the_extremes(sign: int) -> None:
    layout = SlotLayout.for_sum(4096, 52, 2047)
    assert layout.slot_bits == 64
    values = np.full(50, sign * layout.offset, dtype=np.int64)
    values[::3] = -values[::3]
    packed = pack_offset(layout, values)
    sums = [m * 4096 for m in packed]  # the plaintext sum of 4096 identical clients
    assert unpack_sum(layout, sums, 50, 4096).tolist() == (values * 4096).tolist()


@pytest.mark.parametrize("width", [7, 8, 16, 23, 24, 33, 64])
def test_pack_is_the_plain_shift_sum(width: int) -> None:
    layout = SlotLayout(value_bits=width, headroom_bits=0, plaintext_bits=200)
    rng = np.random.default_rng(width)
    top = (1 << width) - 1
    u = rng.integers(0, 2**63, size=37, dtype=np.uint64) & np.uint64(top)
    ints = pack(layout, u)
    expect = [
        sum(int(x) << (j * width) for j, x in enumerate(u[i : i + layout.slots].tolist()))
        for i in range(0, 37, layout.slots)
    ]
    assert ints == expect
    assert unpack(layout, ints, 37).tolist() == u.tolist()


def test_layout_sizes_match_the_batchcrypt_hint() -> None:
    layout = SlotLayout.for_sum(100, 16, 2047)
    assert (layout.slot_bits, layout.slots) == (23, 89)
    assert layout.max_clients >= 100


def test_layout_that_cannot_hold_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="does not fit a 55-bit plaintext"):
        SlotLayout.for_sum(1000, 50, 55)
    with pytest.raises(ConfigError, match="exceeds 64"):
        SlotLayout.for_sum(2**20, 52, 2047)
    with pytest.raises(ConfigError, match="signed"):
        pack_offset(SlotLayout.for_sum(2, 4, 63), np.array([8]))
    with pytest.raises(DecodeError):
        unpack(SlotLayout.for_sum(2, 4, 63), [1 << 70], 3)
    with pytest.raises(DecodeError, match="outside"):
        unpack_sum(SlotLayout.for_sum(2, 4, 63), [0], 3, 0)


# ---- randomness pool --------------------------------------------------------------------------


def test_pool_hands_each_value_out_once_and_refuses_to_reuse() -> None:
    key = small_key()
    pool = RandomnessPool(key.public, randbelow=counter_randbelow(5))
    pool.fill(3)
    got = pool.take(2) + pool.take(1)
    assert len(set(map(int, got))) == 3 and pool.issued == 3 and len(pool) == 0
    with pytest.raises(ProtocolError, match="never reused"):
        pool.take(1)


def test_pool_with_injected_randomness_is_reproducible_and_matches_raw() -> None:
    key = small_key()
    a = RandomnessPool(key.public, randbelow=counter_randbelow(9))
    a.fill(2)
    rb = counter_randbelow(9)
    rs = [rb(int(key.public.n) - 1) + 1 for _ in range(2)]
    assert [int(x) for x in a.take(2)] == [int(obfuscator(key.public, r)) for r in rs]


def test_pool_parallel_fill_equals_serial() -> None:
    key = small_key()
    serial = RandomnessPool(key.public, private=key, randbelow=counter_randbelow(4))
    parallel = RandomnessPool(key.public, private=key, randbelow=counter_randbelow(4), workers=2)
    serial.fill(40)
    parallel.fill(40)
    assert [int(x) for x in serial.take(40)] == [int(x) for x in parallel.take(40)]


def test_fill_pools_spreads_many_pools_over_workers_in_order() -> None:
    from protocols.paillier import fill_pools

    key = small_key()

    def pools() -> list[RandomnessPool]:
        rb = counter_randbelow(6)
        return [RandomnessPool(key.public, private=key if i % 2 else None, randbelow=rb) for i in range(5)]

    serial, parallel = pools(), pools()
    fill_pools([(p, 7 + i) for i, p in enumerate(serial)], workers=1)
    fill_pools([(p, 7 + i) for i, p in enumerate(parallel)], workers=2)
    for a, b in zip(serial, parallel, strict=True):
        assert len(a) == len(b)
        assert [int(x) for x in a.take(len(a))] == [int(x) for x in b.take(len(b))]
    with pytest.raises(ConfigError):
        fill_pools([(serial[0], -1)])


def test_pool_refuses_a_foreign_private_key() -> None:
    other = PrivateKey.from_factors(4294967291, 4294967279)
    with pytest.raises(ConfigError):
        RandomnessPool(small_key().public, private=other)


# ---- the aggregator ---------------------------------------------------------------------------


def test_injected_randomness_makes_ciphertexts_reproducible() -> None:
    from protocols.paillier import PaillierClient
    from protocols.paillier.aggregator import round_layout

    key = small_key()
    cfg = RoundConfig(threshold=1)
    fp, layout = round_layout(2, cfg, key.public)
    x = np.linspace(-1, 1, 40)

    def ciphertexts(seed: int) -> bytes:
        identity = keymod.Ed25519PrivateKey.generate()
        client = PaillierClient(1, identity, {1: identity.public_key()}, 0)
        own = unframe(client.advertise(), 1)
        client.receive_adverts(frame(2, struct.pack(">I", 1) + own))
        client.share_key(key)
        pool = RandomnessPool(key.public, private=key, randbelow=counter_randbelow(seed))
        message: bytes = client.masked_input(x, fp, layout, np.random.default_rng(0), pool)
        return message

    assert ciphertexts(1) == ciphertexts(1)
    assert ciphertexts(1) != ciphertexts(2)


def test_key_is_generated_once_and_reused_across_rounds() -> None:
    agg = PaillierAggregator(key_bits=TEST_KEY_BITS, rng=np.random.default_rng(0))
    inputs = make_inputs(3, 20)
    first = agg.aggregate(inputs, RoundConfig(threshold=2, round_id=0))
    n = agg.public_key.n if agg.public_key else None
    second = agg.aggregate(inputs, RoundConfig(threshold=2, round_id=1))
    assert agg.public_key is not None and agg.public_key.n == n
    assert first.offline_seconds > 0
    np.testing.assert_allclose(first.total, second.total, atol=1e-6)


def test_phe_keypair_is_accepted_and_bad_options_refused() -> None:
    from phe import paillier

    key = small_key()
    phe_priv = paillier.PaillierPrivateKey(
        paillier.PaillierPublicKey(int(key.public.n)), int(key.p), int(key.q)
    )
    agg = PaillierAggregator(keypair=phe_priv)
    result = agg.aggregate(make_inputs(2, 5), RoundConfig(threshold=1))
    assert result.total.shape == (5,)
    with pytest.raises(ConfigError, match="keypair"):
        PaillierAggregator(keypair="nope")
    with pytest.raises(ConfigError, match="workers"):
        PaillierAggregator(workers=0)
    with pytest.raises(ConfigError, match="key_bits"):
        PaillierAggregator(key_bits=100)


def test_layout_refused_before_anything_is_sent() -> None:
    agg = PaillierAggregator(keypair=PrivateKey.from_factors(65521, 65519))
    inputs = make_inputs(40, 4)
    with pytest.raises(ConfigError, match="plaintext"):
        agg.aggregate(inputs, RoundConfig(threshold=2, ring_bits=64, value_bits=30))
    assert agg.pools == {}


def test_bytes_per_value_are_packed() -> None:
    key = small_key()
    length = 1000
    result = PaillierAggregator(keypair=key).aggregate(make_inputs(4, length), RoundConfig(threshold=2))
    layout = SlotLayout.for_sum(4, 30, key.public.plaintext_bits)  # ring_bits 32 -> v = 30
    cts = layout.ciphertexts_for(length)
    sender = max(result.bytes_up)  # not the key holder (lowest id)
    assert result.bytes_up[sender] < cts * key.public.ciphertext_bytes + 300
    assert result.bytes_up[sender] < length * 2 * key.public.ciphertext_bytes / 10


def test_dropped_decryptor_is_replaced() -> None:
    inputs = make_inputs(4, 10)
    ids = sorted(inputs)
    plan = {ids[0]: Stage.UNMASK, ids[1]: Stage.CONSISTENCY}
    agg = PaillierAggregator(keypair=small_key())
    result = agg.aggregate(inputs, RoundConfig(threshold=2), plan)
    assert result.survivors == frozenset(ids)
    assert agg.last_decryptor == ids[2]


def test_no_decryptor_left_aborts() -> None:
    inputs = make_inputs(3, 10)
    plan = dict.fromkeys(inputs, Stage.UNMASK)
    with pytest.raises(AggregationAborted, match="decrypt"):
        PaillierAggregator(keypair=small_key()).aggregate(inputs, RoundConfig(threshold=2), plan)


# ---- sans-IO parties: stage order, tampering --------------------------------------------------


def _two_clients() -> tuple[Any, Any, Any]:
    from protocols.paillier import PaillierClient, PaillierServer

    agg = PaillierAggregator(keypair=small_key())
    for cid in (1, 2):
        agg.enroll(cid)
    cfg = RoundConfig(threshold=2)
    clients = {cid: PaillierClient(cid, agg._identities[cid], agg.directory, 0) for cid in (1, 2)}
    server = PaillierServer(agg.directory, cfg, 2)
    return agg, clients, server


def test_stages_out_of_order_raise() -> None:
    _, clients, _ = _two_clients()
    with pytest.raises(StageError):
        clients[1].share_key(small_key())
    assert clients[1].failed  # terminal: every further call is refused, the right one too
    with pytest.raises(IntegrityError, match="client 1 refuses advertise: it failed earlier"):
        clients[1].advertise()
    clients[2].advertise()
    with pytest.raises(StageError):
        clients[2].advertise()
    with pytest.raises(IntegrityError, match="refuses receive_adverts"):
        clients[2].receive_adverts(b"")


def test_tampered_sealed_key_and_forged_advert_are_rejected() -> None:
    _agg, clients, server = _two_clients()
    adverts = {cid: c.advertise() for cid, c in clients.items()}
    listing = server.collect_adverts(adverts)
    for c in clients.values():
        c.receive_adverts(listing)
    deliveries = server.relay_key(1, clients[1].share_key(small_key()))
    payload = bytearray(unframe(deliveries[2], 4))
    payload[-1] ^= 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        clients[2].receive_key(frame(4, bytes(payload)))
    forged = bytearray(unframe(adverts[2], 1))
    forged[20] ^= 1
    from protocols.paillier import PaillierServer

    fresh = PaillierServer(_agg.directory, RoundConfig(threshold=2), 2)
    with pytest.raises(IntegrityError, match="advert of client 2 failed authentication"):
        fresh.collect_adverts({2: frame(1, bytes(forged))})
    with pytest.raises(IntegrityError, match="server refuses collect_adverts"):  # terminal
        fresh.collect_adverts(adverts)
    with pytest.raises(DecodeError):
        PaillierServer(_agg.directory, RoundConfig(threshold=2), 2).collect_adverts({2: adverts[2][:-1]})


def test_decryptor_refuses_a_sum_over_too_few_clients() -> None:
    _, clients, server = _two_clients()
    listing = server.collect_adverts({cid: c.advertise() for cid, c in clients.items()})
    for c in clients.values():
        c.receive_adverts(listing)
    clients[1].share_key(small_key())
    width = small_key().public.ciphertext_bytes
    body = struct.pack(">QI", 0, 1) + struct.pack(">Q", 2) + struct.pack(">I", 1) + (5).to_bytes(width, "big")
    with pytest.raises(IntegrityError, match="refuses"):
        clients[1].decrypt(frame(7, body), threshold=2)


@pytest.mark.parametrize("value", ["zero", "n^2", "n^2 + 1"])
def test_ciphertexts_out_of_range_are_refused(value: str) -> None:
    """``0 < c < n^2``: the server checks each client's ciphertexts, the decryptor the aggregate's."""
    msgs = _exchange()
    key = small_key()
    nsq = int(key.public.nsquare)
    bad = {"zero": 0, "n^2": nsq, "n^2 + 1": nsq + 1}[value]
    width = key.public.ciphertext_bytes
    assert bad.bit_length() <= 8 * width  # fits the fixed-width field, so only the range check stops it
    payload = unframe(msgs["ciphertexts"], 6)  # client 2's: ids (16) | count (4) | block
    tampered = frame(6, payload[:20] + bad.to_bytes(width, "big") + payload[20 + width :])
    with pytest.raises(DecodeError, match=r"client 2 sent a ciphertext outside \(0, n\^2\)"):
        _exchange({"ciphertexts": tampered})
    payload = unframe(msgs["aggregate"], 7)  # round (8) | 2 ids (4 + 16) | count (4) | product
    tampered = frame(7, payload[:32] + bad.to_bytes(width, "big") + payload[32 + width :])
    with pytest.raises(IntegrityError, match=r"client 2 got an aggregate ciphertext outside \(0, n\^2\)"):
        _exchange({"aggregate": tampered})


def test_header_of_a_truncated_frame_is_refused() -> None:
    with pytest.raises(DecodeError, match="header"):
        unframe(frame(6, b"abc")[:-1], 6)


def test_keygen_refuses_small_keys() -> None:
    with pytest.raises(ConfigError, match="key_bits"):
        keymod.generate_keypair(128)


def _exchange(replace: dict[str, bytes] | None = None, check: bool = True) -> dict[str, bytes]:
    """A full 2-client exchange through the sans-IO parties; ``replace`` swaps a message in transit.

    With ``check`` the decoded sum must be the inputs' (the returned messages then hold it
    under ``"total"``, float64 bytes, either way).
    """
    from protocols.paillier import PaillierClient, PaillierServer
    from protocols.paillier.aggregator import round_layout

    replace = replace or {}
    key = small_key()
    agg = PaillierAggregator(keypair=key)
    for cid in (1, 2):
        agg.enroll(cid)
    cfg = RoundConfig(threshold=2)
    clients = {cid: PaillierClient(cid, agg._identities[cid], agg.directory, 0) for cid in (1, 2)}
    server = PaillierServer(agg.directory, cfg, 2)
    msgs: dict[str, bytes] = {}

    def send(kind: str, message: bytes) -> bytes:
        msgs[kind] = message
        return replace.get(kind, message)

    listing = send("advert_list", server.collect_adverts({cid: c.advertise() for cid, c in clients.items()}))
    for c in clients.values():
        c.receive_adverts(listing)
    deliveries = server.relay_key(1, send("bundle", clients[1].share_key(key)))
    server.collect_acks({2: clients[2].receive_key(send("delivery", deliveries[2]))})
    fp, layout = round_layout(2, cfg, key.public)
    cts = {
        cid: c.masked_input(np.full(5, 0.5), fp, layout, np.random.default_rng(0), RandomnessPool(key.public))
        for cid, c in clients.items()
    }
    cts[2] = send("ciphertexts", cts[2])
    server.collect_ciphertexts(cts)
    plain = clients[2].decrypt(send("aggregate", server.aggregate_message()), 2)
    total = server.decode_sum(send("sum", plain), fp, layout, 5)
    if check:
        np.testing.assert_allclose(total, np.full(5, 1.0), atol=2 * fp.step)
    msgs["total"] = total.tobytes()
    return msgs


@pytest.mark.parametrize("kind", ["advert_list", "bundle", "delivery", "ciphertexts", "aggregate", "sum"])
def test_truncated_messages_raise_protocol_errors(kind: str) -> None:
    original = _exchange()[kind]
    for cut in sorted({*range(9, 40), *range(9, len(original), max(1, len(original) // 25))}):
        if cut >= len(original):
            continue
        payload = original[9:cut]
        with pytest.raises(ProtocolError):
            _exchange({kind: frame(original[4], payload)})


@pytest.mark.parametrize("kind", ["bundle", "delivery", "ciphertexts", "aggregate"])
def test_flipped_bytes_raise_only_protocol_errors(kind: str) -> None:
    """A flipped byte is refused with the project's own error, or leaves the sum exact; nothing else.

    Any other exception (struct, gmpy2, KeyError, ...) fails the test, and so does a flip that
    silently changes the decoded sum.
    """
    from protocols.paillier.aggregator import round_layout

    original = _exchange()[kind]
    step = round_layout(2, RoundConfig(threshold=2), small_key().public)[0].step
    refused, exact = 0, 0
    for pos in range(9, len(original), max(1, len(original) // 20)):
        garbled = bytearray(original)
        garbled[pos] ^= 0x40
        try:
            total = np.frombuffer(_exchange({kind: bytes(garbled)}, check=False)["total"])
        except ProtocolError:
            refused += 1
            continue
        np.testing.assert_allclose(total, np.full(5, 1.0), atol=2 * step, err_msg=f"byte {pos}")
        exact += 1
    assert refused > 0 and refused + exact == len(range(9, len(original), max(1, len(original) // 20)))


def test_round_with_two_workers_matches_one_worker() -> None:
    inputs = make_inputs(3, 2000, seed=4)
    cfg = RoundConfig(threshold=2)
    one = PaillierAggregator(keypair=small_key(), rng=np.random.default_rng(8)).aggregate(inputs, cfg)
    two = PaillierAggregator(keypair=small_key(), workers=2, rng=np.random.default_rng(8)).aggregate(
        inputs, cfg
    )
    np.testing.assert_array_equal(one.total, two.total)


@pytest.mark.slow
def test_real_size_key_round() -> None:
    """A 2048-bit key (the default), 20 clients with dropouts, against plaintext."""
    inputs = make_inputs(20, 3000, seed=9)
    ids = sorted(inputs)
    plan = {ids[0]: Stage.SHARE_KEYS, ids[1]: Stage.MASKED_INPUT, ids[2]: Stage.UNMASK}
    cfg = RoundConfig(threshold=10, value_bits=16)
    agg = PaillierAggregator(workers=2)
    result = agg.aggregate(inputs, cfg, plan)
    want = np.sum([inputs[c] for c in ids[2:]], axis=0)
    step = 1.0 / (2**15 - 1)
    np.testing.assert_allclose(result.total, want, atol=20 * step)
    assert agg.public_key is not None and agg.public_key.bits == 2048

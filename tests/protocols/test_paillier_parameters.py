"""Packed Paillier: every security parameter is the client's own; each lie is refused, then every call.

A client derives or bounds the threshold, t', the slot layout, the clip range, the minimum
key size, the key holder and the round id from its own configuration (``config``,
``n_clients``, ``min_key_bits``, ``key_holders``). Each case below is one lie told to one
client at one stage; the client must raise :class:`IntegrityError` and then refuse every
further call (h11-style terminal state), while the same call with the honest value works.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("gmpy2")

from protocols import AggregationAborted, ConfigError, IntegrityError, ProtocolError, RoundConfig
from protocols.encoding import FixedPoint
from protocols.paillier import (
    PaillierAggregator,
    PaillierClient,
    PaillierServer,
    PrivateKey,
    RandomnessPool,
    SlotLayout,
    generate_keypair,
)
from protocols.paillier import aggregator as pa
from protocols.paillier import keys as keymod
from protocols.paillier import messages as pm
from protocols.paillier.aggregator import encode_aggregate, round_layout
from protocols.wire import frame, unframe
from tests.protocols.test_paillier import small_key

N = 5
THRESHOLD = 3
LENGTH = 6


@functools.cache
def tiny_key() -> PrivateKey:
    """A 256-bit key: below the clients' minimum of 512 bits."""
    return generate_keypair(256)


@dataclasses.dataclass
class Party:
    """A round set up honestly up to the stage a case needs; clients carry their own config."""

    agg: PaillierAggregator
    cfg: RoundConfig
    clients: dict[int, PaillierClient]
    server: PaillierServer
    listing: bytes = b""
    deliveries: dict[int, bytes] = dataclasses.field(default_factory=dict)
    ciphertexts: dict[int, bytes] = dataclasses.field(default_factory=dict)

    def client(self, cid: int, **overrides: object) -> PaillierClient:
        options: dict[str, object] = {
            "malicious": self.server.malicious, "n_clients": N, "config": self.cfg, "min_key_bits": 512,
            "key_holders": {1}, **overrides}
        return PaillierClient(cid, self.agg._identities[cid], self.agg.directory, self.cfg.round_id,
                              **options)  # type: ignore[arg-type]

    def layout(self) -> tuple[FixedPoint, SlotLayout]:
        return round_layout(N, self.cfg, small_key().public)

    def encrypt(self, cid: int) -> bytes:
        fp, layout = self.layout()
        message: bytes = self.clients[cid].masked_input(
            np.full(LENGTH, 0.1 * cid), fp, layout, np.random.default_rng(cid),
            RandomnessPool(small_key().public))
        return message


def setup(stage: str, malicious: bool = False, extra: int = 0) -> Party:
    """Run the honest round up to ``stage`` ("advertised", "keyed" or "masked")."""
    agg = PaillierAggregator(keypair=small_key())
    for c in range(1, N + 2 + extra):
        agg.enroll(c)
    cfg = RoundConfig(threshold=THRESHOLD, round_id=3)
    party = Party(agg, cfg, {}, PaillierServer(agg.directory, cfg, N, malicious=malicious))
    party.clients = {c: party.client(c) for c in range(1, N + 1)}
    adverts = {c: x.advertise() for c, x in party.clients.items()}
    party.listing = party.server.collect_adverts(adverts)
    if stage == "advertised":
        return party
    for x in party.clients.values():
        x.receive_adverts(party.listing)
    party.deliveries = party.server.relay_key(1, party.clients[1].share_key(small_key()))
    party.server.collect_acks({c: party.clients[c].receive_key(m) for c, m in party.deliveries.items()})
    if stage == "keyed":
        return party
    party.ciphertexts = {c: party.encrypt(c) for c in party.clients}
    party.server.collect_ciphertexts(party.ciphertexts)
    return party


def _listed(party: Party) -> dict[int, bytes]:
    """The advert payloads in the server's honest list, by client id."""
    payload = unframe(party.listing, pm.KIND_ADVERT_LIST)
    size = keymod._ADVERT.size
    out = {}
    for i in range(struct.unpack_from(">I", payload)[0]):
        advert = payload[4 + i * size : 4 + (i + 1) * size]
        out[struct.unpack_from(">Q", advert)[0]] = advert
    return out


def _listing(adverts: list[bytes]) -> bytes:
    return frame(pm.KIND_ADVERT_LIST, struct.pack(">I", len(adverts)) + b"".join(adverts))


def _with_holder(party: Party, holder: int, key: PrivateKey) -> dict[int, bytes]:
    """Deliveries of ``key`` from ``holder``, made by a copy of the holder whose config lets it hold."""
    source = party.client(holder, key_holders=None, min_key_bits=256)
    advert = source.advertise()
    adverts = {**_listed(party), holder: unframe(advert, pm.KIND_ADVERT)}
    listing = _listing([adverts[c] for c in sorted(adverts)])
    source.receive_adverts(listing)
    for c, x in party.clients.items():
        if c != holder:
            x.receive_adverts(listing)
    return party.server.relay_key(holder, source.share_key(key))


def _delivery_field(message: bytes, round_id: int | None = None, holder: int | None = None) -> bytes:
    payload = unframe(message, pm.KIND_KEY_DELIVERY)
    hid, rid = struct.unpack_from(">QQ", payload)
    ids = struct.pack(">QQ", hid if holder is None else holder, rid if round_id is None else round_id)
    return frame(pm.KIND_KEY_DELIVERY, ids + payload[16:])


Case = tuple[PaillierClient, Callable[[], object], Callable[[], object]]
"""A case: (the lied-to client, the call with the lie, the same call told the truth)."""


def _request(survivors: tuple[int, ...], round_id: int = 3) -> bytes:
    return frame(pm.KIND_CONSISTENCY_REQUEST,
                 struct.pack(f">QI{len(survivors)}Q", round_id, len(survivors), *survivors))


Lie = Callable[[Party], Case]


def _receive_adverts(party: Party, listing: bytes, cid: int = 2) -> Case:
    client = party.clients[cid]
    honest = copy.deepcopy(client)
    return client, lambda: client.receive_adverts(listing), lambda: honest.receive_adverts(party.listing)


def lie_advert_list_longer_than_n(party: Party) -> Case:
    stranger = party.client(N + 1, n_clients=N + 1)  # enrolled, but not one of this round's n clients
    adverts = [*_listed(party).values(), unframe(stranger.advertise(), pm.KIND_ADVERT)]
    return _receive_adverts(party, _listing(adverts))


def lie_advert_list_below_threshold(party: Party) -> Case:
    listed = _listed(party)
    return _receive_adverts(party, _listing([listed[1], listed[2]]))


def lie_advert_list_names_a_client_twice(party: Party) -> Case:
    listed = _listed(party)
    return _receive_adverts(party, _listing([*listed.values(), listed[4]]))


def lie_advert_list_without_own_advert(party: Party) -> Case:
    listed = _listed(party)
    return _receive_adverts(party, _listing([a for c, a in listed.items() if c != 2]))


def _receive_key(party: Party, message: bytes, cid: int = 2) -> Case:
    client = party.clients[cid]
    honest = copy.deepcopy(client)
    good = party.deliveries[cid]
    return client, lambda: client.receive_key(message), lambda: honest.receive_key(good)


def _deliveries_then(party: Party) -> None:
    for x in party.clients.values():
        x.receive_adverts(party.listing)
    party.deliveries = party.server.relay_key(1, party.clients[1].share_key(small_key()))


def lie_key_from_a_holder_its_config_does_not_allow(party: Party) -> Case:
    forged = _with_holder(party, 3, small_key())  # client 3 holds a key: not in key_holders = {1}
    client = party.clients[2]
    honest = copy.deepcopy(client)
    honest.key_holders = frozenset({1, 3})  # the same client, configured to let 3 hold the key
    return client, lambda: client.receive_key(forged[2]), lambda: honest.receive_key(forged[2])


def lie_key_below_min_key_bits(party: Party) -> Case:
    weak = _with_holder(party, 1, tiny_key())  # the holder itself, with a 256-bit key
    client = party.clients[2]
    honest = copy.deepcopy(client)
    honest.min_key_bits = 256  # the same client, configured to accept 256 bits
    return client, lambda: client.receive_key(weak[2]), lambda: honest.receive_key(weak[2])


def lie_key_delivery_for_another_round(party: Party) -> Case:
    _deliveries_then(party)
    return _receive_key(party, _delivery_field(party.deliveries[2], round_id=2))


def lie_key_delivery_naming_the_recipient_as_holder(party: Party) -> Case:
    _deliveries_then(party)
    return _receive_key(party, _delivery_field(party.deliveries[2], holder=2))


def _masked(party: Party, fp: FixedPoint | None = None, layout: SlotLayout | None = None,
            pool_key: PrivateKey | None = None) -> Case:
    own_fp, own_layout = party.layout()
    client = party.clients[2]
    honest = copy.deepcopy(client)
    pool = RandomnessPool((pool_key or small_key()).public)
    vector = np.full(LENGTH, 0.5)
    return (client,
            lambda: client.masked_input(vector, fp or own_fp, layout or own_layout,
                                        np.random.default_rng(0), pool),
            lambda: honest.masked_input(vector, own_fp, own_layout, np.random.default_rng(0),
                                        RandomnessPool(small_key().public)))


def lie_slot_layout_with_less_headroom(party: Party) -> Case:
    _, layout = party.layout()
    return _masked(party, layout=dataclasses.replace(layout, headroom_bits=layout.headroom_bits - 1))


def lie_slot_layout_with_more_value_bits(party: Party) -> Case:
    fp, layout = party.layout()
    wide = dataclasses.replace(fp, value_bits=fp.value_bits + 2)
    return _masked(party, fp=wide, layout=dataclasses.replace(layout, value_bits=wide.value_bits))


def lie_clip_range_widened(party: Party) -> Case:
    fp, _ = party.layout()
    return _masked(party, fp=dataclasses.replace(fp, clip_range=fp.clip_range * 4))


def lie_randomness_pool_for_another_key(party: Party) -> Case:
    from tests.protocols.test_paillier_malicious import other_key

    return _masked(party, pool_key=other_key())


def lie_threshold_lowered_for_consistency(party: Party) -> Case:
    client = party.clients[2]
    honest = copy.deepcopy(client)
    everyone = tuple(range(1, N + 1))
    return (client, lambda: client.consistency(_request(everyone), 1),
            lambda: honest.consistency(_request(everyone)))


def lie_consistency_request_for_another_round(party: Party) -> Case:
    client = party.clients[2]
    honest = copy.deepcopy(client)
    everyone = tuple(range(1, N + 1))
    return (client, lambda: client.consistency(_request(everyone, round_id=2)),
            lambda: honest.consistency(_request(everyone)))


def lie_survivor_set_below_t_prime(party: Party) -> Case:
    client = party.clients[2]  # threshold 3 = t' for n = 5: a set of 2 is refused, whatever the caller passes
    honest = copy.deepcopy(client)
    return (client, lambda: client.consistency(_request((1, 2))),
            lambda: honest.consistency(_request(tuple(range(1, N + 1)))))


def _aggregate(party: Party, round_id: int = 3, survivors: tuple[int, ...] = tuple(range(1, N + 1)),
               count_delta: int = 0) -> bytes:
    product = party.server._product
    width = small_key().public.ciphertext_bytes
    cts = product + ([1] * count_delta) if count_delta >= 0 else product[:count_delta]
    return encode_aggregate(round_id, survivors, cts, width)


def _decrypt(party: Party, message: bytes, threshold: int | None = None) -> Case:
    client = party.clients[2]
    honest = copy.deepcopy(client)
    good = party.server.aggregate_message()
    return client, lambda: client.decrypt(message, threshold), lambda: honest.decrypt(good)


def lie_threshold_lowered_for_decryption(party: Party) -> Case:
    return _decrypt(party, _aggregate(party, survivors=(1, 2)), threshold=2)


def lie_sum_over_fewer_than_own_threshold(party: Party) -> Case:
    return _decrypt(party, _aggregate(party, survivors=(1, 2)))  # no threshold passed: the client's own 3


def lie_aggregate_of_another_round(party: Party) -> Case:
    return _decrypt(party, _aggregate(party, round_id=2))


def lie_aggregate_with_another_ciphertext_count(party: Party) -> Case:
    return _decrypt(party, _aggregate(party, count_delta=1))


# (case, the stage the round is set up to, malicious model, the refusal's text)
CASES: list[tuple[Lie, str, bool, str]] = [
    (lie_advert_list_longer_than_n, "advertised", False, "6 adverts for a round set up with 5 clients"),
    (lie_advert_list_below_threshold, "advertised", False, "2 adverts, below its threshold 3"),
    (lie_advert_list_names_a_client_twice, "advertised", False, "naming client 4 twice"),
    (lie_advert_list_without_own_advert, "advertised", False, "without its own advert"),
    (lie_key_from_a_holder_its_config_does_not_allow, "advertised", False,
     "key from client 3, whom its configuration does not let hold it"),
    (lie_key_below_min_key_bits, "advertised", False, "refuses the 256-bit Paillier key of holder 1"),
    (lie_key_delivery_for_another_round, "advertised", False, "got a key delivery for round 2"),
    (lie_key_delivery_naming_the_recipient_as_holder, "advertised", False, "naming itself as the holder"),
    (lie_slot_layout_with_less_headroom, "keyed", False, "slot layout .* not its own"),
    (lie_slot_layout_with_more_value_bits, "keyed", False, "encoding .* not its own"),
    (lie_clip_range_widened, "keyed", False, "encoding .* not its own"),
    (lie_randomness_pool_for_another_key, "keyed", False, "randomness pool for another Paillier key"),
    (lie_threshold_lowered_for_consistency, "masked", True,
     "told threshold 1 to sign, below its own threshold 3"),
    (lie_consistency_request_for_another_round, "masked", True, "asked to sign the survivor set of round 2"),
    (lie_survivor_set_below_t_prime, "masked", True, "set of 2 clients"),
    (lie_threshold_lowered_for_decryption, "masked", False, "told threshold 2 to decrypt, below its own"),
    (lie_sum_over_fewer_than_own_threshold, "masked", False, r"sum announced over 2 clients \(threshold 3\)"),
    (lie_aggregate_of_another_round, "masked", False, "decrypt an aggregate of round 2"),
    (lie_aggregate_with_another_ciphertext_count, "masked", False, "aggregate of 2 ciphertexts; it sent 1"),
]


@pytest.mark.parametrize(("lie", "stage", "malicious", "error"), CASES,
                         ids=[c[0].__name__[4:] for c in CASES])
def test_each_lie_is_refused_then_every_call(lie: Lie, stage: str, malicious: bool, error: str) -> None:
    party = setup(stage, malicious=malicious)
    client, lied, truthful = lie(party)
    truthful()  # the same call told the truth passes (on a copy taken before the lie)
    with pytest.raises(IntegrityError, match=f"round 3: client 2 .*{error}"):
        lied()
    assert client.failed
    calls: list[Callable[[], object]] = [client.advertise, lambda: client.receive_adverts(party.listing),
             lambda: client.share_key(small_key()), lambda: client.receive_key(b""),
             lambda: client.consistency(_request(tuple(range(1, N + 1)))), lambda: client.decrypt(b"")]
    for call in calls:
        with pytest.raises(IntegrityError, match=r"round 3: client 2 refuses .*failed earlier in this round"):
            call()


def test_a_client_refuses_to_hold_the_key_against_its_config() -> None:
    party = setup("advertised")
    client = party.clients[2]
    client.receive_adverts(party.listing)
    with pytest.raises(IntegrityError, match="asked to hold the key; its configuration names other"):
        client.share_key(small_key())
    with pytest.raises(IntegrityError, match="refuses receive_key"):
        client.receive_key(b"")


def test_the_holder_refuses_to_share_a_key_below_its_minimum() -> None:
    party = setup("advertised")
    party.clients[1].receive_adverts(party.listing)
    with pytest.raises(IntegrityError, match="refuses the 256-bit Paillier key of holder 1"):
        party.clients[1].share_key(tiny_key())
    assert party.clients[1].failed


def test_foreign_exceptions_leave_a_stage_as_integrity_errors() -> None:
    """Garbage of the wrong type makes struct, numpy or cryptography raise; the client converts it."""
    for garbage in (None, 5, "text", object()):
        party = setup("advertised")
        client = party.clients[2]
        with pytest.raises(ProtocolError):
            client.receive_adverts(garbage)  # type: ignore[arg-type]
        assert client.failed
    party = setup("keyed")
    client = party.clients[2]
    fp, layout = party.layout()
    with pytest.raises(IntegrityError, match="masked_input refused a message that raised AttributeError"):
        client.masked_input(np.zeros(LENGTH), fp, layout, np.random.default_rng(0), None)  # type: ignore[arg-type]
    assert client.failed


def test_a_low_order_x25519_key_in_an_advert_is_refused() -> None:
    """RFC 7748 section 6.1: an all-zero shared secret must be refused, not used as a key."""
    party = setup("advertised")
    listed = _listed(party)
    identity = party.agg._identities[4]
    body = struct.pack(">QQ", 4, 3) + bytes(32)  # client 4 (enrolled, but malicious) advertises the point 0
    listed[4] = body + identity.sign(keymod._DOMAIN + b"advert" + body)
    listing = _listing([listed[c] for c in sorted(listed)])
    holder = party.clients[1]
    holder.receive_adverts(listing)
    with pytest.raises(IntegrityError, match="key transport 1 -> 4: the peer's advertised X25519 key"):
        holder.share_key(small_key())
    assert holder.failed


def test_the_server_is_terminal_after_an_abort() -> None:
    party = setup("keyed")
    with pytest.raises(AggregationAborted):
        party.server.collect_ciphertexts({1: party.encrypt(1)})
    with pytest.raises(IntegrityError, match="round 3: server refuses aggregate_message: it failed earlier"):
        party.server.aggregate_message()


def test_without_a_config_the_layout_is_still_checked_against_n() -> None:
    party = setup("keyed")
    client = party.clients[2]
    bare = PaillierClient(2, party.agg._identities[2], party.agg.directory, 3, n_clients=N)
    bare._stage, bare.keypair = client._stage, client.keypair  # the same state, without its config
    fp, layout = party.layout()
    pool = RandomnessPool(small_key().public)
    with pytest.raises(IntegrityError, match="2 headroom bits; the sum of 5 clients needs 3"):
        bare.masked_input(np.zeros(LENGTH), fp, dataclasses.replace(layout, headroom_bits=2),
                          np.random.default_rng(0), pool)
    with pytest.raises(ConfigError, match="config is for round 4"):
        PaillierClient(2, party.agg._identities[2], party.agg.directory, 3, config=RoundConfig(round_id=4))
    with pytest.raises(ConfigError, match="min_key_bits must be >= 256"):
        PaillierClient(2, party.agg._identities[2], party.agg.directory, 3, min_key_bits=128)


def test_the_aggregator_gives_every_client_its_own_parameters() -> None:
    inputs = {c: np.full(4, 0.1 * c) for c in (3, 5, 8, 9)}
    cfg = RoundConfig(threshold=3)
    agg = PaillierAggregator(keypair=small_key(), key_holders={5, 8})
    result = agg.aggregate(inputs, cfg)
    step = round_layout(4, cfg, small_key().public)[0].step
    np.testing.assert_allclose(result.total, np.full(4, 0.1 * 25), atol=4 * step)
    assert max(result.bytes_up, key=result.bytes_up.__getitem__) == 5  # the holder uploads the sealed keys
    with pytest.raises(AggregationAborted, match=r"no key holder|SHARE_KEYS"):  # no allowed holder answers
        PaillierAggregator(keypair=small_key(), key_holders={5}).aggregate(
            inputs, cfg, {5: pa.Stage.SHARE_KEYS})
    with pytest.raises(ConfigError, match="the 512-bit key is below min_key_bits=1024"):
        PaillierAggregator(keypair=small_key(), min_key_bits=1024).aggregate(inputs, cfg)
    with pytest.raises(ConfigError, match="key_holders must name at least one client"):
        PaillierAggregator(keypair=small_key(), key_holders=())


# ---- fuzzing every server-to-client message: project errors only, then terminal -------------------
@functools.cache
def _fuzz_states() -> dict[str, tuple[PaillierClient, bytes, str, bytes | None]]:
    """kind -> (client state just before the message, the honest message, the method, honest reply)."""
    states: dict[str, tuple[PaillierClient, bytes, str, bytes | None]] = {}
    for malicious in (False, True):
        party = setup("advertised", malicious=malicious)
        model = "malicious" if malicious else "honest"
        states[f"advert list ({model})"] = (copy.deepcopy(party.clients[2]), party.listing, "receive_adverts",
                                            None)
        for x in party.clients.values():
            x.receive_adverts(party.listing)
        deliveries = party.server.relay_key(1, party.clients[1].share_key(small_key()))
        states[f"key delivery ({model})"] = (copy.deepcopy(party.clients[2]), deliveries[2], "receive_key",
                                             None)
        party.server.collect_acks({c: party.clients[c].receive_key(m) for c, m in deliveries.items()})
        party.server.collect_ciphertexts({c: party.encrypt(c) for c in party.clients})
        if malicious:
            request = party.server.consistency_request()
            states["consistency request"] = (copy.deepcopy(party.clients[2]), request, "consistency", None)
            party.server.collect_signatures({c: x.consistency(request) for c, x in party.clients.items()})
        aggregate = party.server.aggregate_message()
        # the honest-but-curious decryptor decrypts any product it is handed (no integrity, by design);
        # the malicious model's decryptor multiplies signed ciphertexts itself: any reply is the honest one
        reply = copy.deepcopy(party.clients[2]).decrypt(aggregate) if malicious else None
        states[f"aggregate ({model})"] = (copy.deepcopy(party.clients[2]), aggregate, "decrypt", reply)
    return states


def _mutate(message: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
    if how == "truncate":
        return message[: data.draw(st.integers(0, len(message) - 1))]
    if how == "extend":
        return message + data.draw(st.binary(min_size=1, max_size=40))
    pos = data.draw(st.integers(0, len(message) - 1))
    if how == "flip":
        bit = data.draw(st.integers(0, 7))
        return message[:pos] + bytes([message[pos] ^ (1 << bit)]) + message[pos + 1 :]
    chunk = data.draw(st.binary(min_size=1, max_size=8))
    return (message[:pos] + chunk + message[pos + len(chunk) :])[: len(message)]


FUZZ_KINDS = ["advert list (honest)", "advert list (malicious)", "key delivery (honest)",
              "key delivery (malicious)", "consistency request", "aggregate (honest)",
              "aggregate (malicious)"]


@pytest.mark.parametrize("kind", FUZZ_KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_message_is_refused_with_a_project_error_or_changes_nothing(kind: str,
                                                                              data: st.DataObject) -> None:
    _check_mutation(kind, data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FUZZ_KINDS)
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_many_mutated_messages(kind: str, data: st.DataObject) -> None:
    _check_mutation(kind, data)


def _check_mutation(kind: str, data: st.DataObject) -> None:
    state, message, method, reply = _fuzz_states()[kind]
    mutated = _mutate(message, data)
    client = copy.deepcopy(state)
    try:
        got = getattr(client, method)(mutated)
    except ProtocolError:
        assert client.failed
        with pytest.raises(IntegrityError, match="failed earlier"):
            getattr(client, method)(message)
        return
    if reply is not None:  # a decryption that went through returns exactly the honest sum
        assert got == reply

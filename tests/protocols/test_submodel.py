"""Submodel SecAgg: exact sums on every coordinate (dropouts included), the holder floor,
randomized response, policy refusals, terminal state and message decoding."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols import (
    AggregationAborted,
    ConfigError,
    DecodeError,
    IntegrityError,
    RoundConfig,
    Stage,
    StageError,
)
from protocols.encoding import FixedPoint
from protocols.submodel import (
    RowLayout,
    RowRequest,
    SubmodelAggregator,
    SubmodelClient,
    SubmodelInput,
    SubmodelPolicy,
    SubmodelSetup,
    keep_probability,
    randomized_response,
)
from protocols.submodel.client import holder_counts

LAYOUT = RowLayout.blocks(num_rows=40, width=3, shared=2)
CLIP = 1.0
RING = 32


def pinned(label: str) -> Callable[[int], bytes]:
    counter = [0]

    def randbytes(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(f"{label}/{counter[0]}".encode()).digest(n)

    return randbytes


def grid_inputs(n: int, per_client: int, seed: int) -> tuple[dict[int, SubmodelInput], float]:
    """Inputs on the encoding's grid (stochastic rounding is then exact), and the grid step."""
    step = FixedPoint.for_sum(n, CLIP, RING, None).step
    rng = np.random.default_rng(seed)
    top = int(CLIP / step) // 2
    out = {}
    for c in range(n):
        rows = np.sort(rng.choice(LAYOUT.num_rows, per_client, replace=False))
        out[c * 7 + 1] = SubmodelInput(rows, rng.integers(-top, top, (per_client, LAYOUT.width)) * step,
                                       rng.integers(-top, top, LAYOUT.shared.size) * step)
    return out, step


def expected_sum(agg: SubmodelAggregator, inputs: dict[int, SubmodelInput], survivors: frozenset[int],
                 u2: set[int]) -> np.ndarray:
    """What the protocol must release: each survivor's kept, non-thin rows and its shared values."""
    server = agg.last_server
    assert server is not None
    table, h = server.table, agg.policy.min_holders
    counts = holder_counts(table, u2, LAYOUT.num_rows)
    total = np.zeros(LAYOUT.length)
    for c in survivors:
        x = inputs[c]
        total[LAYOUT.shared] += x.shared
        for row, vals in zip(x.rows, x.values, strict=True):
            if row in table[c] and counts[row] >= h:
                total[LAYOUT.rows[row]] += vals
    return total


def run(n: int = 8, eps: float = 1.0, malicious: bool = True, plan: dict[int, Stage] | None = None,
        threshold: int = 4, seed: int = 0) -> tuple[SubmodelAggregator, dict[int, SubmodelInput], Any, float]:
    inputs, step = grid_inputs(n, 6, seed)
    agg = SubmodelAggregator(LAYOUT, item_epsilon=eps, malicious=malicious, randbytes=pinned(f"r{seed}"),
                             rng=np.random.default_rng(seed))
    cfg = RoundConfig(threshold=threshold, clip_range=CLIP, ring_bits=RING)
    result = agg.aggregate(inputs, cfg, plan or {})
    return agg, inputs, result, step


@pytest.mark.parametrize("malicious", [True, False])
def test_sum_is_exact_on_every_coordinate(malicious: bool) -> None:
    agg, inputs, res, step = run(malicious=malicious)
    want = expected_sum(agg, inputs, res.result.survivors, set(inputs))
    assert res.result.survivors == frozenset(inputs)
    np.testing.assert_allclose(res.result.total, want, rtol=0, atol=step / 2)
    assert np.abs(want).sum() > 0


@pytest.mark.parametrize("stage", list(Stage))
def test_one_client_dropping_at_each_stage_keeps_the_sum_exact(stage: Stage) -> None:
    dropper = 8  # the second client (ids are 7c + 1); a low epsilon: every row has several holders
    agg, inputs, res, step = run(n=12, eps=0.1, plan={dropper: stage}, threshold=6)
    survivors = res.result.survivors
    assert (dropper in survivors) == (stage >= Stage.CONSISTENCY)  # its masked input arrived
    assert len(survivors) >= len(inputs) - 1
    u2 = set(inputs) - ({dropper} if stage <= Stage.SHARE_KEYS else set())
    np.testing.assert_allclose(res.result.total, expected_sum(agg, inputs, survivors, u2),
                               rtol=0, atol=step / 2)


def test_upload_follows_the_reported_set_not_the_catalogue() -> None:
    agg, _, res, _ = run(eps=6.0)
    server = agg.last_server
    assert server is not None
    for c, size in res.reported.items():
        assert size < LAYOUT.num_rows // 2
        values = LAYOUT.client_length(size) * RING // 8
        assert values < res.result.bytes_up[c] < values + 2 * size + 4000


def test_a_row_left_with_one_survivor_aborts_and_reveals_nothing() -> None:
    # eps large: the reported set is the true set; rows 0..2 are held by clients 1 and 8 only
    step = FixedPoint.for_sum(3, CLIP, RING, None).step
    rows = {1: [0, 1, 2], 8: [0, 1, 2], 15: [30]}
    inputs = {c: SubmodelInput(np.array(r), np.full((len(r), 3), step), np.zeros(2)) for c, r in rows.items()}
    agg = SubmodelAggregator(LAYOUT, item_epsilon=60.0, randbytes=pinned("abort"),
                             rng=np.random.default_rng(0))
    cfg = RoundConfig(threshold=2, clip_range=CLIP, ring_bits=RING)
    with pytest.raises(AggregationAborted, match="fewer than 2"):
        agg.aggregate(inputs, cfg, {8: Stage.MASKED_INPUT})
    # the same round: row 30 (client 15's alone) is thin, so it is zeroed, never released
    res = agg.aggregate(inputs, cfg, {})
    assert np.all(res.result.total[LAYOUT.rows[30]] == 0)
    np.testing.assert_allclose(res.result.total[LAYOUT.rows[0]], 2 * step)


def test_an_honest_client_refuses_to_unmask_a_row_left_with_one_holder() -> None:
    """A server that skips its own check still gets no self-mask share: the clients refuse."""
    from protocols.submodel.server import SubmodelServer

    step = FixedPoint.for_sum(3, CLIP, RING, None).step
    rows = {1: [0, 1], 8: [0, 1], 15: [5, 6]}
    rows[15] = [0, 1]
    rows[22] = [5]
    rows[29] = [5]
    cfg = RoundConfig(threshold=3, clip_range=CLIP, ring_bits=RING)
    rb = pinned("refuse")
    clients = {c: SubmodelClient(c, LAYOUT, np.array(r), np.full((len(r), 3), step), np.zeros(2),
                                 submodel=SubmodelPolicy(item_epsilon=60.0), malicious=False, randbytes=rb)
               for c, r in rows.items()}
    server = SubmodelServer(cfg, clients, LAYOUT, min_holders=1, malicious=False)  # a lax server
    msgs = server.receive_requests({c: k.request() for c, k in clients.items()})
    msgs = server.receive_advertisements({c: clients[c].advertise(m) for c, m in msgs.items()})
    msgs = server.receive_shares({c: clients[c].share_keys(m) for c, m in msgs.items()})
    masked = {c: clients[c].masked_input(m) for c, m in msgs.items() if c != 29}  # 29 drops: row 5 has one
    requests = server.receive_masked_inputs(masked)
    with pytest.raises(IntegrityError, match="row 5 would be unmasked"):
        clients[1].unmask(requests[1])
    with pytest.raises(StageError):  # terminal
        clients[1].unmask(requests[1])


def test_randomized_response_keeps_and_adds_at_the_stated_rates() -> None:
    rng = np.random.default_rng(3)
    true = np.array([2, 3, 50, 99])
    eps, trials = 1.0, 4000
    hits = np.zeros(100)
    for _ in range(trials):
        hits[randomized_response(true, 100, eps, rng)] += 1
    p = keep_probability(eps)
    sd = np.sqrt(p * (1 - p) / trials)
    assert np.all(np.abs(hits[true] / trials - p) < 5 * sd)
    others = np.delete(hits, true) / trials
    assert abs(others.mean() - (1 - p)) < 5 * sd / np.sqrt(96)
    assert np.log(hits[true].mean() / trials / others.mean()) == pytest.approx(eps, abs=0.1)  # the LDP ratio


def test_randomized_response_output_is_sorted_unique_and_in_range() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        true = np.sort(rng.choice(1000, 30, replace=False))
        out = randomized_response(true, 1000, 0.5, rng)
        assert np.all(np.diff(out) > 0) and out.min() >= 0 and out.max() < 1000


@pytest.mark.parametrize("eps", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_epsilon_is_refused(eps: float) -> None:
    with pytest.raises(ConfigError):
        SubmodelPolicy(item_epsilon=eps)


def test_holder_floor_below_two_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_holders"):
        SubmodelPolicy(item_epsilon=1.0, min_holders=1)


def _client(cid: int = 1) -> SubmodelClient:
    return SubmodelClient(cid, LAYOUT, np.array([1, 2]), np.zeros((2, 3)), np.zeros(2),
                          submodel=SubmodelPolicy(item_epsilon=2.0), malicious=False, randbytes=pinned("c"))


def test_a_table_without_the_clients_own_set_is_refused_and_terminal() -> None:
    from protocols.submodel.server import SubmodelServer

    cfg = RoundConfig(threshold=1, clip_range=CLIP, ring_bits=RING)
    a, b = _client(1), _client(2)
    server = SubmodelServer(cfg, [1, 2], LAYOUT, malicious=False)
    setups = server.receive_requests({1: a.request(), 2: b.request()})
    forged = SubmodelSetup.decode(setups[1])
    lie = SubmodelSetup(forged.setup, {**forged.table, 1: np.array([7])}).encode()
    with pytest.raises(IntegrityError, match="reported set"):
        a.advertise(lie)
    with pytest.raises(StageError):
        a.advertise(setups[1])


def test_a_sparse_graph_is_refused() -> None:
    from protocols.secagg.messages import Setup

    a = _client(1)
    req = RowRequest.decode(a.request())
    setup = Setup(round_id=0, client_id=1, length=LAYOUT.client_length(req.rows.size), ring_bits=RING,
                  value_bits=16, clip_range=CLIP, threshold=3, share_threshold=3, degree=2, malicious=False,
                  graph_seed=bytes(32), client_ids=(1, 2, 3, 4, 5, 6)).encode()
    with pytest.raises(IntegrityError, match="degree"):
        a.advertise(SubmodelSetup(setup, {1: req.rows}).encode())


def test_stages_out_of_order_are_refused() -> None:
    a = _client()
    with pytest.raises(StageError):
        a.advertise(b"")
    b = _client()
    b.request()
    with pytest.raises(StageError):
        b.request()


@pytest.mark.parametrize("cut", [1, 5, 12, 20])
def test_truncated_or_padded_messages_are_decode_errors(cut: int) -> None:
    msg = RowRequest(3, 40, np.array([1, 5, 9])).encode()
    with pytest.raises(DecodeError):
        RowRequest.decode(msg[:-cut])
    with pytest.raises(DecodeError):
        RowRequest.decode(msg + bytes(cut))
    setup = SubmodelSetup(b"abc", {1: np.array([1, 2]), 4: np.array([0])}).encode()
    with pytest.raises(DecodeError):
        SubmodelSetup.decode(setup[:-cut])


def test_rows_out_of_order_or_range_are_decode_errors() -> None:
    good = RowRequest(3, 40, np.array([1, 5, 9])).encode()  # gaps 2, 4, 4: one byte each
    bad = good[:-1] + bytes([0])  # a zero gap: 9 -> 5, a repeated row
    with pytest.raises(DecodeError, match="increasing"):
        RowRequest.decode(bad)
    padded = good[:-1] + bytes([0x84, 0x00])  # the gap 4 as two bytes: not canonical
    with pytest.raises(DecodeError):
        RowRequest.decode(padded)
    with pytest.raises(DecodeError, match="outside"):
        RowRequest.decode(RowRequest(3, 9, np.array([1, 5, 9])).encode())


def test_row_sets_round_trip_in_about_a_byte_a_row() -> None:
    rng = np.random.default_rng(1)
    for top in (50, 100_000, 2**32):
        rows = np.unique(rng.integers(0, top, 2000))
        msg = RowRequest(9, 2**32 - 1, rows).encode()
        np.testing.assert_array_equal(RowRequest.decode(msg).rows, rows)
    rows = np.sort(rng.choice(100_000, 1900, replace=False))  # a reported set at eps 4
    assert len(RowRequest(9, 100_000, rows).encode()) < 1.2 * rows.size


def test_layout_refuses_overlapping_rows() -> None:
    with pytest.raises(ConfigError, match="share a coordinate"):
        RowLayout(6, np.array([[0, 1], [1, 2]]))


def test_a_client_shown_another_table_breaks_the_consistency_signatures() -> None:
    """Malicious model: the signatures bind the row table, so a split view of the sets is refused."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocols.secagg.client import raw_public
    from protocols.submodel.server import SubmodelServer

    rb = pinned("split")
    ids = [1, 8, 15, 22]
    keys = {c: Ed25519PrivateKey.from_private_bytes(rb(32)) for c in ids}
    pki = {c: raw_public(k) for c, k in keys.items()}
    cfg = RoundConfig(threshold=3, clip_range=CLIP, ring_bits=RING)
    clients = {c: SubmodelClient(c, LAYOUT, np.array([0, 1, 2]), np.zeros((3, 3)), np.zeros(2),
                                 submodel=SubmodelPolicy(item_epsilon=60.0), identity_key=keys[c],
                                 identity_keys=pki, randbytes=rb) for c in ids}
    server = SubmodelServer(cfg, ids, LAYOUT)
    setups = server.receive_requests({c: k.request() for c, k in clients.items()})
    honest = SubmodelSetup.decode(setups[1])
    setups[1] = SubmodelSetup(honest.setup, {**honest.table, 22: np.array([0, 1, 2, 9])}).encode()  # a lie
    msgs = server.receive_advertisements({c: clients[c].advertise(m) for c, m in setups.items()})
    msgs = server.receive_shares({c: clients[c].share_keys(m) for c, m in msgs.items()})
    msgs = server.receive_masked_inputs({c: clients[c].masked_input(m) for c, m in msgs.items()})
    msgs = server.receive_signatures({c: clients[c].consistency(m) for c, m in msgs.items()})
    with pytest.raises(IntegrityError, match="consistency signature of 1"):
        clients[8].unmask(msgs[8])


# ---- SecAgg+ sharing: secrets go to the k graph neighbours, masks to every peer of U2 ----------------

def sparse_run(malicious: bool, plan: dict[int, Stage] | None = None, n: int = 16, degree: int = 4,
               seed: int = 6) -> tuple[SubmodelAggregator, dict[int, SubmodelInput], Any, float]:
    inputs, step = grid_inputs(n, 6, seed)
    agg = SubmodelAggregator(LAYOUT, item_epsilon=0.1, malicious=malicious, neighbors=degree,
                             randbytes=pinned(f"sparse{seed}"), rng=np.random.default_rng(seed))
    cfg = RoundConfig(threshold=n // 2, clip_range=CLIP, ring_bits=RING)
    return agg, inputs, agg.aggregate(inputs, cfg, plan or {}), step


@pytest.mark.parametrize("malicious", [True, False])
@pytest.mark.parametrize("stage", list(Stage))
def test_sparse_sharing_keeps_the_sum_exact_with_dropouts(malicious: bool, stage: Stage) -> None:
    droppers = {8: stage, 43: stage}  # two clients (ids 7c + 1)
    agg, inputs, res, step = sparse_run(malicious, droppers)
    server = agg.last_server
    assert server is not None and server.degree == 4  # shares went to 4 neighbours, not to all 15
    for c in server.client_ids:
        assert len(server.neighbors[c]) == 4
    survivors = res.result.survivors
    assert survivors == frozenset(inputs) - (set(droppers) if stage <= Stage.MASKED_INPUT else set())
    u2 = set(inputs) - (set(droppers) if stage <= Stage.SHARE_KEYS else set())
    want = expected_sum(agg, inputs, survivors, u2)
    np.testing.assert_allclose(res.result.total, want, rtol=0, atol=step / 2)
    assert np.abs(want).sum() > 0


def _sparse_round(malicious: bool = True, n: int = 12, degree: int = 4, threshold: int = 6,
                  label: str = "manual") -> tuple[dict[int, SubmodelClient], Any, dict[int, bytes]]:
    """Clients and server of a sparse-graph round, driven up to the unmask requests (exclusive)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocols.secagg import ClientPolicy
    from protocols.secagg.client import raw_public
    from protocols.submodel.server import SubmodelServer

    rb = pinned(label)
    ids = [7 * c + 1 for c in range(n)]
    keys = {c: Ed25519PrivateKey.from_private_bytes(rb(32)) for c in ids}
    pki = {c: raw_public(k) for c, k in keys.items()}
    policy = ClientPolicy(min_threshold=threshold, min_threshold_fraction=0.0, min_degree=degree,
                          degree_bound=False)
    step = FixedPoint.for_sum(n, CLIP, RING, None).step
    clients = {c: SubmodelClient(c, LAYOUT, np.array([0, 1, 2]), np.full((3, 3), step), np.zeros(2),
                                 submodel=SubmodelPolicy(item_epsilon=60.0), malicious=malicious,
                                 identity_key=keys[c] if malicious else None,
                                 identity_keys=pki if malicious else None, randbytes=rb, policy=policy)
               for c in ids}
    cfg = RoundConfig(threshold=threshold, clip_range=CLIP, ring_bits=RING, neighbors=degree)
    server = SubmodelServer(cfg, ids, LAYOUT, malicious=malicious)
    msgs = server.receive_requests({c: k.request() for c, k in clients.items()})
    msgs = server.receive_advertisements({c: clients[c].advertise(m) for c, m in msgs.items()})
    msgs = server.receive_shares({c: clients[c].share_keys(m) for c, m in msgs.items()})
    return clients, server, msgs


def test_a_server_asking_for_both_shares_of_a_peer_is_refused() -> None:
    from protocols.secagg.messages import UnmaskRequest
    from protocols.submodel.messages import SubmodelUnmaskRequest

    clients, server, msgs = _sparse_round(malicious=False)
    msgs = server.receive_masked_inputs({c: clients[c].masked_input(m) for c, m in msgs.items()})
    w = 1
    victim = min(server.neighbors[w])
    honest = SubmodelUnmaskRequest.decode(msgs[w])
    inner = UnmaskRequest.decode(honest.request)
    assert victim in inner.survivors
    both = UnmaskRequest(inner.survivors, tuple(sorted({*inner.dropped, victim})))
    with pytest.raises(IntegrityError, match="both shares"):
        clients[w].unmask(SubmodelUnmaskRequest(both.encode(), honest.u3).encode())
    with pytest.raises(StageError):  # terminal
        clients[w].unmask(msgs[w])
    other = min(server.neighbors[victim] - {w})  # the honest request still works for another neighbour
    clients[other].unmask(msgs[other])


def test_a_server_splitting_u3_to_get_both_shares_is_refused() -> None:
    """Malicious model: a neighbour asked for the key share of a client that is in the signed U3 refuses."""
    from protocols.secagg.messages import UnmaskRequest
    from protocols.submodel.messages import SubmodelUnmaskRequest

    clients, server, msgs = _sparse_round(malicious=True)
    msgs = server.receive_masked_inputs({c: clients[c].masked_input(m) for c, m in msgs.items()})
    msgs = server.receive_signatures({c: clients[c].consistency(m) for c, m in msgs.items()})
    w = 1
    victim = min(server.neighbors[w])
    honest = SubmodelUnmaskRequest.decode(msgs[w])
    inner = UnmaskRequest.decode(honest.request)
    u3 = tuple(c for c in honest.u3 if c != victim)  # the victim "dropped", in this client's request only
    lie = UnmaskRequest(tuple(c for c in inner.survivors if c != victim),
                        tuple(sorted({*inner.dropped, victim})), inner.signatures)
    sigs = tuple((c, s) for c, s in honest.mask_signatures if c != victim)
    with pytest.raises(IntegrityError, match="U3 differs"):
        clients[w].unmask(SubmodelUnmaskRequest(lie.encode(), u3, sigs).encode())


def test_a_client_shown_a_smaller_u2_is_caught_by_its_neighbours() -> None:
    """Malicious model: a server that hides some peers from a victim's U2 (so the victim masks its rows
    against fewer of them) cannot get the victim's self-mask shares: its neighbours check the victim's
    signature on the U2 it masked against."""
    from protocols.submodel.messages import SubmodelSharesIn

    clients, server, msgs = _sparse_round(malicious=True)
    victim = 1
    real = SubmodelSharesIn.decode(msgs[victim])
    hidden = max(set(real.u2) - server.neighbors[victim] - {victim})  # a non-neighbour: no share to check
    msgs[victim] = SubmodelSharesIn(real.shares_in, tuple(c for c in real.u2 if c != hidden)).encode()
    masked = {c: clients[c].masked_input(m) for c, m in msgs.items()}
    msgs = server.receive_masked_inputs(masked)
    msgs = server.receive_signatures({c: clients[c].consistency(m) for c, m in msgs.items()
                                      if c != victim})  # the victim's view differs: it would refuse
    w = min(server.neighbors[victim])
    with pytest.raises(IntegrityError, match=f"U2 signature of {victim}"):
        clients[w].unmask(msgs[w])


@pytest.mark.parametrize(("field", "value"), [("degree", 2), ("share_threshold", 2), ("threshold", 5)])
def test_a_weaker_degree_or_share_threshold_is_refused(field: str, value: int) -> None:
    from protocols.secagg.messages import Setup

    clients, server, _ = _sparse_round(malicious=False)  # the clients' floor: degree 4, threshold 6
    c = 1
    client = SubmodelClient(c, LAYOUT, np.array([0, 1, 2]), np.zeros((3, 3)), np.zeros(2),
                            submodel=SubmodelPolicy(item_epsilon=60.0), malicious=False,
                            randbytes=pinned("weak"), policy=clients[c]._policy)
    req = RowRequest.decode(client.request())
    table = {**server.table, c: req.rows}
    ids = server.client_ids
    fields = dict(round_id=0, client_id=c, length=LAYOUT.client_length(req.rows.size), ring_bits=RING,
                  value_bits=server.encoding.value_bits, clip_range=CLIP, threshold=6,
                  share_threshold=server.share_threshold, degree=4, malicious=False,
                  graph_seed=server.graph_seed, client_ids=ids)
    ok = SubmodelClient(c, LAYOUT, np.array([0, 1, 2]), np.zeros((3, 3)), np.zeros(2),
                        submodel=SubmodelPolicy(item_epsilon=60.0), malicious=False,
                        randbytes=pinned("weak"), policy=clients[c]._policy)
    ok.request()
    ok.advertise(SubmodelSetup(Setup(**fields).encode(), table).encode())  # the honest setup is accepted
    fields[field] = value
    with pytest.raises(IntegrityError, match=field.replace("_", " ")):
        client.advertise(SubmodelSetup(Setup(**fields).encode(), table).encode())


def test_the_default_policy_refuses_a_degree_below_bell_et_al_bound() -> None:
    """With no fixed degree each client checks the announced one against its own corruption rate."""
    from protocols.secagg import choose_degree, degree_is_secure, share_threshold
    from protocols.secagg.messages import Setup

    n, threshold = 200, 100
    ids = tuple(range(1, n + 1))
    client = SubmodelClient(1, LAYOUT, np.array([0, 1, 2]), np.zeros((3, 3)), np.zeros(2),
                            submodel=SubmodelPolicy(item_epsilon=60.0), malicious=False,
                            randbytes=pinned("bound"))
    req = RowRequest.decode(client.request())
    k = choose_degree(n, threshold=threshold)
    weak = k - 2
    assert not degree_is_secure(n, weak, threshold, malicious=False, corruption_rate=0.05)
    from protocols.secagg.graph import graph_seed

    setup = Setup(round_id=0, client_id=1, length=LAYOUT.client_length(req.rows.size), ring_bits=RING,
                  value_bits=16, clip_range=CLIP, threshold=threshold,
                  share_threshold=share_threshold(threshold, n, weak, False), degree=weak, malicious=False,
                  graph_seed=graph_seed(0, ids), client_ids=ids).encode()
    with pytest.raises(IntegrityError, match="degree"):
        client.advertise(SubmodelSetup(setup, {1: req.rows}).encode())


def test_a_table_whose_row_list_runs_into_the_next_is_a_decode_error() -> None:
    good = SubmodelSetup(b"s", {1: np.array([3]), 2: np.array([5])}).encode()
    # the first list's only byte (gap 4) with its continuation bit set: its varint would end in the next list
    at = good.index(bytes([4]) + (2).to_bytes(8, "big"))
    bad = good[:at] + bytes([0x84]) + good[at + 1 :]
    SubmodelSetup.decode(good)
    with pytest.raises(DecodeError, match="another number of values"):
        SubmodelSetup.decode(bad)

"""A property-based adversarial SecAgg server (issue 14).

Over whole malicious-model rounds of 4 to 7 honest clients, hypothesis drives a
server that picks one or two stages to deviate at and, for every message it sends
to every client at those stages, either
sends the honest message, withholds it, flips a bit, replays an earlier message
(its own to another client or stage), or lies in a structured way (any Setup
field; dropped, substituted -- by keys it holds -- or foreign advertisements;
dropped, swapped or misaddressed share ciphertexts; any survivor set; any split
of survivors and dropped clients and any choice of signatures in the unmask
request). Each client is shown its own view, so split views arise naturally.

Afterwards the server tries to recover each single client's input from
everything it received: the masked inputs, every share in the unmask
responses, and every share ciphertext it can open with the keys it substituted;
for every number of shares it rebuilds the mask key (checked against the
advertised public key) and the self-mask seed, unmasks, and compares with the
true input.

Criterion: no single input is ever recovered, and no client raises anything
but the project's own errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import FixedPoint, RoundConfig, SecureFedRecError, shamir
from protocols.prg import MaskExpander
from protocols.secagg import SecAggClient, SecAggServer, _crypto
from protocols.secagg import messages as m
from protocols.secagg.client import raw_public

L = 3
ROUND = 11
MAX_N = 7
IDENTITY = {c: Ed25519PrivateKey.from_private_bytes(bytes([c]) * 32) for c in range(1, MAX_N + 1)}
PKI = {c: raw_public(k) for c, k in IDENTITY.items()}
ACTIONS = ("honest", "honest", "drop", "flip", "replay", "lie", "lie", "lie")
METHODS = ("advertise", "share_keys", "masked_input", "consistency", "consistency", "unmask", "unmask")
"""Where the server may deviate; the survivor-set stages twice as often (that is where split views live)."""
Shares = dict[int, list[tuple[int, np.ndarray]]]


class Adversary:
    """The server's side of one round: what it sent, what it received, the keys it planted."""

    def __init__(self, data: st.DataObject, n: int, seed: int,
                 client_class: type[SecAggClient] = SecAggClient) -> None:
        self.data = data
        self.ids = list(range(1, n + 1))
        rng = np.random.default_rng(seed)
        self.inputs = {c: rng.uniform(-1, 1, L) for c in self.ids}
        threshold = data.draw(st.integers((n + 1) // 2, n), label="threshold")
        # the stages where the server deviates (elsewhere it is honest, so rounds reach the unmask stage)
        self.deviant = data.draw(st.sets(st.sampled_from(METHODS), min_size=1, max_size=2), label="deviant")
        self.cfg = RoundConfig(round_id=ROUND, threshold=threshold, ring_bits=32)
        self.server = SecAggServer(self.cfg, self.ids, L, malicious=True)
        self.clients = {
            c: client_class(c, self.inputs[c], identity_key=IDENTITY[c], identity_keys=PKI, round_id=ROUND,
                            rng=np.random.default_rng([seed, c]))
            for c in self.ids
        }
        self.sent: list[bytes] = []  # every message the server sent, for replays
        self.last_sent: dict[int, bytes] = {}  # what each client got at the current stage
        self.setup_seen: dict[int, m.Setup] = {}
        self.ads_seen: dict[int, dict[int, m.Advertisement]] = {}  # what each client was shown
        self.ads: dict[int, m.Advertisement] = {}
        self.fake_c: dict[tuple[int, int], X25519PrivateKey] = {}  # (shown to, advertiser) -> planted key
        self.shares_out: dict[int, m.SharesOut] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.signatures: dict[int, bytes] = {}
        self.views: dict[int, tuple[int, ...]] = {}
        self.self_shares: Shares = {}
        self.key_shares: Shares = {}

    # ---- delivering ----------------------------------------------------------------------------
    def deliver(
        self, method: str, honest: dict[int, bytes], lie: Callable[[int, bytes], bytes]
    ) -> dict[int, bytes]:
        """Send each client the honest message or a deviation of it; return the replies."""
        replies = {}
        for c in sorted(honest):
            action = "honest"
            if method in self.deviant:
                action = self.data.draw(st.sampled_from(ACTIONS), label=f"{method} {c}")
            raw = honest[c]
            if action == "drop":
                continue
            if action == "flip" and raw:
                pos = self.data.draw(st.integers(0, len(raw) - 1))
                raw = raw[:pos] + bytes([raw[pos] ^ (1 << self.data.draw(st.integers(0, 7)))]) + raw[pos + 1:]
            elif action == "replay" and self.sent:
                raw = self.data.draw(st.sampled_from(self.sent))
            elif action == "lie":
                raw = lie(c, raw)
            self.sent.append(raw)
            self.last_sent[c] = raw
            try:
                replies[c] = getattr(self.clients[c], method)(raw)
            except SecureFedRecError:  # refused (terminal); anything else fails the test
                continue
        return replies

    def subset(self, ids: list[int] | set[int], label: str) -> list[int]:
        return sorted(self.data.draw(st.sets(st.sampled_from(sorted(ids))), label=label)) if ids else []

    # ---- the stages ----------------------------------------------------------------------------
    def setup_lie(self, c: int, raw: bytes) -> bytes:
        setup = m.Setup.decode(raw)
        n = len(setup.client_ids)
        field = self.data.draw(st.sampled_from([
            "threshold", "share_threshold", "degree", "graph_seed", "ring_bits", "value_bits", "clip_range",
            "round_id", "wrap", "client_ids", "malicious"]), label="setup field")
        value: Any
        if field == "threshold":
            value = self.data.draw(st.integers(1, n))
        elif field == "share_threshold":
            value = self.data.draw(st.integers(1, setup.degree + 1))
        elif field == "degree":
            value = self.data.draw(st.integers(1, n - 1))
        elif field == "graph_seed":
            value = self.data.draw(st.binary(min_size=32, max_size=32))
        elif field == "ring_bits":
            value = self.data.draw(st.sampled_from([8, 16, 24, 40, 64]))
        elif field == "value_bits":
            value = self.data.draw(st.integers(2, min(setup.ring_bits, 52)))
        elif field == "clip_range":
            value = self.data.draw(st.sampled_from([1e-3, 0.5, 2.0, 1e3]))
        elif field == "round_id":
            value = self.data.draw(st.integers(0, 20))
        elif field == "client_ids":
            value = tuple(sorted({c, *self.subset(set(self.ids) - {c}, "invited")}))
        else:
            value = not getattr(setup, field)
        return dataclasses.replace(setup, **{field: value}).encode()

    def broadcast_lie(self, c: int, raw: bytes) -> bytes:
        ads = {a.client_id: a for a in m.AdvertiseBroadcast.decode(raw).advertisements}
        kind = self.data.draw(st.sampled_from(["drop", "c_pk", "s_pk", "low-order", "signature", "foreign"]))
        target = self.data.draw(st.sampled_from(sorted(ads))) if ads else None
        if kind == "drop" and target is not None:
            del ads[target]
        elif kind == "c_pk" and target is not None:
            fake = X25519PrivateKey.generate()
            self.fake_c[(c, target)] = fake
            ads[target] = dataclasses.replace(ads[target], c_pk=raw_public(fake))
        elif kind in ("s_pk", "low-order") and target is not None:
            key = bytes(32) if kind == "low-order" else raw_public(X25519PrivateKey.generate())
            ads[target] = dataclasses.replace(ads[target], s_pk=key)
        elif kind == "signature" and len(ads) > 1:
            other = next(a for a in sorted(ads) if a != target)
            ads[target] = dataclasses.replace(ads[target], signature=ads[other].signature)  # type: ignore[index]
        elif kind == "foreign":
            extra = [a for a in self.ads if a not in ads and a != c]
            if extra:
                ads[extra[0]] = self.ads[extra[0]]
        return m.AdvertiseBroadcast(tuple(ads[a] for a in sorted(ads))).encode()

    def shares_lie(self, c: int, raw: bytes) -> bytes:
        items = dict(m.SharesIn.decode(raw).shares)
        everything = [(s, h, ct) for s, out in self.shares_out.items() for h, ct in out.shares]
        kind = self.data.draw(st.sampled_from(["drop", "swap", "misaddressed"]))
        senders = sorted(items)
        if kind == "drop" and senders:
            del items[self.data.draw(st.sampled_from(senders))]
        elif kind == "swap" and len(senders) > 1:
            a, b = senders[0], senders[-1]
            items[a], items[b] = items[b], items[a]
        elif kind == "misaddressed" and everything:
            s, _, ct = self.data.draw(st.sampled_from(everything))
            items[s] = ct
        return m.SharesIn(tuple(sorted(items.items()))).encode()

    def consistency_lie(self, c: int, raw: bytes) -> bytes:
        return m.ConsistencyRequest(tuple(self.subset(self.ids, "U3"))).encode()

    def holds(self, c: int) -> set[int]:
        return (set(self.server.neighbors[c]) & set(self.shares_out)) | {c}

    def unmask_lie(self, c: int, raw: bytes) -> bytes:
        h = self.holds(c)
        alive = self.subset(h, "survivors")
        dead = self.subset(h - set(alive) if self.data.draw(st.booleans()) else h, "dropped")
        signers = self.subset(set(self.signatures), "signers")
        sigs = tuple((v, self.signatures[v]) for v in signers)
        return m.UnmaskRequest(tuple(alive), tuple(dead), sigs).encode()

    def run(self) -> None:
        setups = self.server.setup()
        replies = self.deliver("advertise", setups, self.setup_lie)
        self.setup_seen = {c: m.Setup.decode(self.last_sent[c]) for c in replies}
        self.ads = {c: m.Advertisement.decode(r) for c, r in replies.items()}
        honest = {}
        for c in self.ads:
            shown = tuple(self.ads[v] for v in sorted(self.server.neighbors[c] & set(self.ads)))
            honest[c] = m.AdvertiseBroadcast(shown).encode()
        replies = self.deliver("share_keys", honest, self.broadcast_lie)
        self.ads_seen = {
            c: {a.client_id: a for a in m.AdvertiseBroadcast.decode(self.last_sent[c]).advertisements}
            for c in replies
        }
        self.shares_out = {c: m.SharesOut.decode(r) for c, r in replies.items()}
        routed: dict[int, list[tuple[int, bytes]]] = {c: [] for c in self.shares_out}
        for s, out in sorted(self.shares_out.items()):
            for h, ct in out.shares:
                if h in routed:
                    routed[h].append((s, ct))
        replies = self.deliver("masked_input", {c: m.SharesIn(tuple(v)).encode() for c, v in routed.items()},
                               self.shares_lie)
        self.masked = {c: m.MaskedInput.decode(r, L).values for c, r in replies.items()}
        u3 = tuple(sorted(self.masked))
        replies = self.deliver("consistency", dict.fromkeys(u3, m.ConsistencyRequest(u3).encode()),
                               self.consistency_lie)
        self.views = {c: m.ConsistencyRequest.decode(self.last_sent[c]).survivors for c in replies}
        self.signatures = {c: m.ConsistencySignature.decode(r).signature for c, r in replies.items()}
        honest_unmask = {}
        for c, view in self.views.items():
            held = self.holds(c)
            sigs = tuple((v, s) for v, s in sorted(self.signatures.items())
                         if v in self.server.neighbors[c] and self.views[v] == view)
            alive, dead = tuple(sorted(held & set(view))), tuple(sorted(held - set(view)))
            honest_unmask[c] = m.UnmaskRequest(alive, dead, sigs).encode()
        replies = self.deliver("unmask", honest_unmask, self.unmask_lie)
        for holder, raw in replies.items():
            resp = m.UnmaskResponse.decode(raw)
            for peer, row in zip(resp.self_mask_peers, resp.self_mask_shares, strict=True):
                self.self_shares.setdefault(peer, []).append((holder, row))
            for peer, row in zip(resp.key_peers, resp.key_shares, strict=True):
                self.key_shares.setdefault(peer, []).append((holder, row))
        self._open_planted_ciphertexts()

    def _open_planted_ciphertexts(self) -> None:
        """Decrypt every share bundle sent to a key the server planted; both halves are shares."""
        for s, out in self.shares_out.items():
            for h, ct in out.shares:
                fake = self.fake_c.get((s, h))
                if fake is None:
                    continue
                shared = _crypto.agree(fake, self.ads[s].c_pk)
                key = _crypto.share_key(shared, ROUND, s, h)
                head = _crypto.share_header(ROUND, s, h)
                try:
                    plain = _crypto.decrypt_share(key, head, ct, "adversary")
                except SecureFedRecError:
                    continue
                row = np.frombuffer(plain[16:], ">u8").astype(np.uint64)
                self.key_shares.setdefault(s, []).append((h, row[: m.SHARE_ELEMENTS]))
                self.self_shares.setdefault(s, []).append((h, row[m.SHARE_ELEMENTS:]))

    # ---- the attack ----------------------------------------------------------------------------
    def recovered(self) -> list[int]:
        """Clients whose input the server unmasks from what it holds."""
        out = []
        for v in sorted(set(self.masked) & set(self.self_shares) & set(self.key_shares)):
            for t in range(1, min(len(self.self_shares[v]), len(self.key_shares[v])) + 1):
                s_sk = _secret(self.key_shares[v][:t])
                if s_sk is None or raw_public(X25519PrivateKey.from_private_bytes(s_sk)) != self.ads[v].s_pk:
                    continue
                seed = _secret(self.self_shares[v][:t])
                if seed is not None and self._unmasks(v, s_sk, seed):
                    out.append(v)
                    break
        return out

    def _unmasks(self, v: int, s_sk: bytes, seed: bytes) -> bool:
        """Unmask v's input with the encoding and the peer keys that v itself accepted."""
        setup = self.setup_seen[v]
        enc = FixedPoint(clip_range=setup.clip_range, value_bits=setup.value_bits, ring_bits=setup.ring_bits,
                         wrap=setup.wrap)
        expander = MaskExpander(L, setup.ring_bits)
        acc = expander.accumulator(self.masked[v])
        expander.subtract(acc, seed)
        key = X25519PrivateKey.from_private_bytes(s_sk)
        for peer, ad in self.ads_seen.get(v, {}).items():
            try:
                pair = _crypto.mask_seed(key, ad.s_pk, setup.round_id, v, peer)
            except ValueError:  # a low-order key v would have refused
                return False
            if v < peer:
                expander.subtract(acc, pair)
            else:
                expander.add(acc, pair)
        got = enc.decode(acc.astype(np.uint64) & enc.modulus_mask)
        want = self.inputs[v] if setup.wrap else np.clip(self.inputs[v], -setup.clip_range, setup.clip_range)
        return bool(np.max(np.abs(got - want)) <= 2 * enc.step)


def _secret(points: list[tuple[int, np.ndarray]]) -> bytes | None:
    try:
        xs = [c for c, _ in points]  # client ids 1..n are also the Shamir x-coordinates
        return shamir.field_to_bytes(shamir.reconstruct(xs, np.stack([r for _, r in points])), 32)
    except (ValueError, SecureFedRecError):
        return None


def adversarial_round(data: st.DataObject) -> None:
    n = data.draw(st.integers(4, MAX_N), label="n")
    adversary = Adversary(data, n, data.draw(st.integers(0, 2**16), label="seed"))
    adversary.run()
    assert adversary.recovered() == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_adversarial_server_recovers_no_input(data: st.DataObject) -> None:
    adversarial_round(data)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_adversarial_server_recovers_no_input_10k_rounds(data: st.DataObject) -> None:
    adversarial_round(data)


class LeakyClient(SecAggClient):
    """A broken client that answers an unmask request with both shares of every peer it names."""

    def _unmask(self, message: bytes) -> tuple[bytes, None]:
        request = m.UnmaskRequest.decode(message)
        ids = tuple(sorted(set(request.survivors) | set(request.dropped)))
        rows = np.stack([self._shares[c] for c in ids])
        e = m.SHARE_ELEMENTS
        return m.UnmaskResponse(self.client_id, ids, rows[:, e:], ids, rows[:, :e]).encode(), None


class HonestChoices:
    """Stands in for hypothesis's data object: every message honest, a fixed threshold."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def draw(self, strategy: object, label: str | None = None) -> object:
        del strategy
        return self.threshold if label == "threshold" else "honest"


def test_the_adversary_recovers_every_input_from_a_leaky_client() -> None:
    """The criterion can fail: with clients that reveal both shares, every input is recovered."""
    honest = Adversary(HonestChoices(3), 5, seed=1)  # type: ignore[arg-type]
    honest.run()
    assert sorted(honest.masked) == [1, 2, 3, 4, 5] and honest.recovered() == []
    leaky = Adversary(HonestChoices(3), 5, seed=1, client_class=LeakyClient)  # type: ignore[arg-type]
    leaky.run()
    assert leaky.recovered() == [1, 2, 3, 4, 5]

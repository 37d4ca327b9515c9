"""``malicious-server`` against SecAgg / SecAgg+: a server that deviates to unmask one client's input.

(:class:`~attacks.malicious.attack.MaliciousServerAttack` runs these scenarios, the lies of
:mod:`attacks.malicious.secagg_lies` and, for ``paillier``, those of :mod:`attacks.malicious.paillier`.)

The attack drives the sans-IO state machines of :mod:`protocols.secagg`
directly: honest :class:`~protocols.secagg.SecAggClient` objects and a
:class:`~protocols.secagg.SecAggServer` whose outgoing messages the attacker
rewrites. A client's masked input ``y_v = x_v + PRG(b_v) + sum of pairwise masks``
is unmasked once the server holds ``t'`` shares of *both* the self-mask seed
``b_v`` and the mask key ``s_sk_v`` -- a *revealed secret*. Scenarios:

``drop-claim``        (a) after v sent its masked input, the server asks v's
                      neighbours for both of v's shares in one request, then (fresh
                      round) declares v dropped to get its key shares.
``key-substitution``  (b) the server replaces every advertised encryption key by
                      its own (man in the middle) and decrypts the shares.
``share-tampering``   (c) the server flips a bit of an encrypted share, and
                      replays to a client a share addressed to another client.
``split-view``        (d) the server tells one group that v survived (it reveals
                      b_v shares) and the other that v dropped (s_sk_v shares).
``split-view-colluder`` (e) the same with one client the server controls: a holder of
                      v's shares next to v on the graph's ring, which signs both
                      views and hands over both of its shares of v. The ring is cut
                      into two arcs, so every honest client still sees t' signers of
                      its own view among its neighbours.

Each scenario runs against the configured model (``malicious=True``: signed
advertisements, consistency round) and, as the baseline, against the
semi-honest model (``malicious=False``: the undefended protocol). The metric
is the number of revealed secrets, verified by actually unmasking ``y_v``
(the recovered input matches the true one to the quantization step). Honest
clients that detect a deviation raise :class:`~protocols.errors.IntegrityError`;
the outcome lists who aborted and with which message.

Notes:
    Split view needs two groups of signers, each reaching the Shamir threshold t',
    that share no honest client. With a strict majority of v's m share holders that
    is impossible without corrupted holders, but one corrupted holder (in both
    groups) suffices when m is odd (``split-view-colluder``), and c of them when
    ``m + c >= 2t'``. :func:`protocols.secagg.share_threshold` therefore takes t'
    above ``(m + c) / 2`` for the c holders the server may control
    (:func:`protocols.secagg.corrupt_holders`, from the corruption rate), and each
    client computes t' itself (:class:`protocols.secagg.ClientPolicy`):
    a server that announces a lower t' is refused at setup
    (:mod:`attacks.malicious.secagg_lies` runs that lie and every other one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attacks.malicious.outcomes import SECAGG_SCENARIOS, ScenarioOutcome, check_scenario
from protocols import ProtocolError, RoundConfig, shamir
from protocols.prg import MaskExpander
from protocols.secagg import CORRUPTION_RATE, SecAggAggregator, SecAggClient, SecAggServer, _crypto
from protocols.secagg import messages as msg
from protocols.secagg.client import raw_public
from securefedrec.errors import ConfigError

__all__ = ["SCENARIOS", "run_scenario"]

SCENARIOS = SECAGG_SCENARIOS
"""The scenarios of this module."""
_E = msg.SHARE_ELEMENTS


class _Round:
    """One SecAgg round whose server messages the attacker may rewrite."""

    def __init__(self, n: int, threshold: int, degree: int | None, malicious: bool, length: int,
                 rng: np.random.Generator, randbytes: Callable[[int], bytes],
                 client_class: type[SecAggClient] = SecAggClient,
                 corruption_rate: float = CORRUPTION_RATE) -> None:
        self.ids = list(range(1, n + 1))
        self.cfg = RoundConfig(round_id=7, threshold=threshold, ring_bits=32, clip_range=1.0,
                               neighbors=degree)
        self.inputs = {c: rng.uniform(-1, 1, length) for c in self.ids}
        ident = {c: Ed25519PrivateKey.from_private_bytes(randbytes(32)) for c in self.ids}
        self.identities = ident
        """Every client's identity key (what the attacker holds for the clients it controls)."""
        pki = {c: raw_public(k) for c, k in ident.items()}
        self.length = length
        self.malicious = malicious
        self.server = SecAggServer(self.cfg, self.ids, length, malicious=malicious, randbytes=randbytes,
                                   corruption_rate=corruption_rate)
        # the honest clients' own floor, from the same configuration as the honest server's
        policy = SecAggAggregator(neighbors=degree, malicious=malicious).client_policy(n, self.cfg)
        if corruption_rate != CORRUPTION_RATE:  # clients that assume another rate (0: the bare majority)
            policy = replace(policy, corruption_rate=corruption_rate)
        self.clients = {
            c: client_class(c, self.inputs[c], malicious=malicious,
                            identity_key=ident[c] if malicious else None,
                            identity_keys=pki if malicious else None, round_id=7, randbytes=randbytes,
                            rng=np.random.default_rng([c, 1]), policy=policy)
            for c in self.ids
        }
        self.t = self.server.share_threshold
        self.masked: dict[int, np.ndarray] = {}
        self.ads: dict[int, msg.Advertisement] = {}
        self.aborted: set[int] = set()
        self.setups: dict[int, bytes] = {}
        """The Setup messages sent by :meth:`honest_until_masked` (for replays)."""

    def call(self, method: str, inbox: Mapping[int, bytes], out: ScenarioOutcome) -> dict[int, bytes]:
        """Deliver ``inbox``; honest clients that detect a deviation abort (recorded in ``out``)."""
        replies = {}
        for c in sorted(inbox):
            try:
                replies[c] = getattr(self.clients[c], method)(inbox[c])
            except (ProtocolError, ConfigError) as exc:  # the project's own errors; anything else escapes
                self.aborted.add(c)
                out.aborted.append(c)
                out.errors.append(f"{type(exc).__name__}: {exc}")
        return replies

    def honest_until_masked(self, out: ScenarioOutcome) -> dict[int, bytes]:
        """Run the honest stages up to the masked inputs; keep them; return the server's next messages."""
        inbox = self.setups = self.server.setup()
        ads = self.call("advertise", inbox, out)
        self.ads = {c: msg.Advertisement.decode(a) for c, a in ads.items()}
        inbox = self.server.receive_advertisements(ads)
        inbox = self.server.receive_shares(self.call("share_keys", inbox, out))
        masked = self.call("masked_input", inbox, out)
        self.masked = {c: msg.MaskedInput.decode(m, self.length).values for c, m in masked.items()}
        return self.server.receive_masked_inputs(masked)

    def holds(self, c: int) -> set[int]:
        """Clients whose shares ``c`` holds (its neighbours and itself; nobody dropped)."""
        return set(self.server.neighbors[c]) | {c}

    def unmask(self, victim: int, seed: bytes, key: bytes) -> np.ndarray:
        """``y_v`` minus its self mask and pairwise masks: the victim's input, decoded."""
        enc = self.server.encoding
        expander = MaskExpander(self.length, self.cfg.ring_bits)
        acc = expander.accumulator(self.masked[victim])
        expander.subtract(acc, seed)
        s_sk = X25519PrivateKey.from_private_bytes(key)
        for peer in sorted(self.server.neighbors[victim]):
            pair = _crypto.mask_seed(s_sk, self.ads[peer].s_pk, self.cfg.round_id, victim, peer)
            if victim < peer:
                expander.subtract(acc, pair)
            else:
                expander.add(acc, pair)
        decoded: np.ndarray = enc.decode(acc.astype(np.uint64) & enc.modulus_mask)
        return decoded

    def score(self, self_shares: Mapping[int, list[tuple[int, np.ndarray]]],
              key_shares: Mapping[int, list[tuple[int, np.ndarray]]], out: ScenarioOutcome) -> None:
        """Count victims whose both secrets the server can rebuild, and prove it by unmasking."""
        xs = {c: i + 1 for i, c in enumerate(self.ids)}
        for victim in sorted(set(self_shares) & set(key_shares)):
            a, b = self_shares[victim], key_shares[victim]
            if len(a) < self.t or len(b) < self.t:
                continue
            seed = _rebuild([(xs[h], r) for h, r in a[: self.t]])
            key = _rebuild([(xs[h], r) for h, r in b[: self.t]])
            recovered = self.unmask(victim, seed, key)
            err = float(np.max(np.abs(recovered - self.inputs[victim])))
            if err <= 2 * self.server.encoding.step:
                out.revealed += 1
                out.notes.append(f"client {victim}'s input unmasked (max error {err:.2e})")


def _rebuild(points: list[tuple[int, np.ndarray]]) -> bytes:
    xs = [x for x, _ in points]
    return shamir.field_to_bytes(shamir.reconstruct(xs, np.stack([r for _, r in points])), 32)


def _collect(replies: Mapping[int, bytes], self_shares: dict[int, list[tuple[int, np.ndarray]]],
             key_shares: dict[int, list[tuple[int, np.ndarray]]]) -> None:
    for holder, raw in replies.items():
        resp = msg.UnmaskResponse.decode(raw)
        for peer, row in zip(resp.self_mask_peers, resp.self_mask_shares, strict=True):
            self_shares.setdefault(peer, []).append((holder, row))
        for peer, row in zip(resp.key_peers, resp.key_shares, strict=True):
            key_shares.setdefault(peer, []).append((holder, row))


def _signatures(rnd: _Round, c: int, sigs: Mapping[int, bytes]) -> tuple[tuple[int, bytes], ...]:
    return tuple((v, sigs[v]) for v in sorted(rnd.server.neighbors[c] & sigs.keys()))


def _consistency(rnd: _Round, views: Mapping[int, tuple[int, ...]], out: ScenarioOutcome) -> dict[int, bytes]:
    """Send each client its (possibly forged) survivor set; return the signatures it gave."""
    requests = {c: msg.ConsistencyRequest(u3).encode() for c, u3 in views.items()}
    replies = rnd.call("consistency", requests, out)
    return {c: msg.ConsistencySignature.decode(r).signature for c, r in replies.items()}


def _drop_claim(rnd: _Round, victim: int, out: ScenarioOutcome, both: bool) -> None:
    rnd.honest_until_masked(out)
    everyone = tuple(rnd.ids)
    claimed = tuple(c for c in everyone if c != victim)
    asked = [c for c in claimed if victim in rnd.holds(c)]
    sigs: dict[int, bytes] = {}
    if rnd.malicious:  # the server claims v dropped after it sent its masked input
        sigs = _consistency(rnd, {c: (everyone if both else claimed) for c in asked}, out)
    requests = {}
    for c in asked:
        if c in rnd.aborted:
            continue
        h = rnd.holds(c)
        alive = tuple(sorted(h & set(everyone if both else claimed)))
        requests[c] = msg.UnmaskRequest(alive, (victim,), _signatures(rnd, c, sigs)).encode()
    self_shares: dict[int, list[tuple[int, np.ndarray]]] = {}
    key_shares: dict[int, list[tuple[int, np.ndarray]]] = {}
    _collect(rnd.call("unmask", requests, out), self_shares, key_shares)
    got, got_self = len(key_shares.get(victim, [])), len(self_shares.get(victim, []))
    out.notes.append(f"{'both shares asked at once' if both else 'victim declared dropped'}: "
                     f"{got_self} self-mask and {got} key shares of the victim obtained (t' = {rnd.t})")
    rnd.score(self_shares, key_shares, out)


def _key_substitution(rnd: _Round, out: ScenarioOutcome, randbytes: Callable[[int], bytes]) -> None:
    inbox = rnd.server.setup()
    ads = rnd.call("advertise", inbox, out)
    rnd.ads = {c: msg.Advertisement.decode(a) for c, a in ads.items()}
    fake = {c: X25519PrivateKey.from_private_bytes(randbytes(32)) for c in rnd.ads}
    forged = {}
    for c, raw in rnd.server.receive_advertisements(ads).items():
        bc = msg.AdvertiseBroadcast.decode(raw)
        forged[c] = msg.AdvertiseBroadcast(tuple(
            msg.Advertisement(ad.client_id, raw_public(fake[ad.client_id]), ad.s_pk, ad.signature)
            for ad in bc.advertisements)).encode()
    shares_out = rnd.call("share_keys", forged, out)
    # the man in the middle decrypts every share with its substituted keys
    rows: dict[int, list[tuple[int, np.ndarray]]] = {}
    for sender, raw in shares_out.items():
        for holder, ct in msg.SharesOut.decode(raw).shares:
            shared = _crypto.agree(fake[holder], rnd.ads[sender].c_pk)
            key = _crypto.share_key(shared, rnd.cfg.round_id, sender, holder)
            head = _crypto.share_header(rnd.cfg.round_id, sender, holder)
            plain = _crypto.decrypt_share(key, head, ct, "attacker")
            rows.setdefault(sender, []).append((holder, np.frombuffer(plain[16:], ">u8").astype(np.uint64)))
    if not rows:
        return
    out.notes.append(f"decrypted {sum(len(v) for v in rows.values())} shares")
    # each decrypted row holds a share of the sender's mask key and of its self-mask seed: with t'
    # rows the server rebuilds both, so it can unmask the sender's input once it arrives
    key_rows = {s: [(h, r[:_E]) for h, r in v] for s, v in rows.items()}
    xs = {c: i + 1 for i, c in enumerate(rnd.ids)}
    for sender in sorted(rows):
        if len(rows[sender]) < rnd.t:
            continue
        key = _rebuild([(xs[h], r) for h, r in key_rows[sender][: rnd.t]])
        if raw_public(X25519PrivateKey.from_private_bytes(key)) == rnd.ads[sender].s_pk:
            out.revealed += 1
    out.notes.append(f"{out.revealed} mask keys rebuilt and checked against the advertised s_pk; "
                     "each comes with the self-mask seed shared in the same rows")


def _share_tampering(rnd: _Round, out: ScenarioOutcome) -> None:
    inbox = rnd.server.setup()
    ads = rnd.call("advertise", inbox, out)
    rnd.ads = {c: msg.Advertisement.decode(a) for c, a in ads.items()}
    inbox = rnd.server.receive_advertisements(ads)
    shares_out = rnd.call("share_keys", inbox, out)
    routed = rnd.server.receive_shares(shares_out)
    ids = sorted(routed)
    tampered, replayed = ids[0], ids[1]
    evil = dict(routed)
    bundle = msg.SharesIn.decode(routed[tampered])
    sender, ct = bundle.shares[0]
    evil[tampered] = msg.SharesIn(((sender, ct[:-1] + bytes([ct[-1] ^ 1])), *bundle.shares[1:])).encode()
    # replay: client `replayed` receives, as sender s's share, the ciphertext s made for someone else
    bundle = msg.SharesIn.decode(routed[replayed])
    s = bundle.shares[0][0]
    other = next(ct for h, ct in msg.SharesOut.decode(shares_out[s]).shares if h != replayed)
    evil[replayed] = msg.SharesIn(((s, other), *bundle.shares[1:])).encode()
    before = set(out.aborted)
    rnd.call("masked_input", {c: evil[c] for c in (tampered, replayed)}, out)
    caught = set(out.aborted) - before
    verdict = {c: "refused" if c in caught else "ACCEPTED" for c in (tampered, replayed)}
    out.notes.append(f"tampered share to client {tampered}: {verdict[tampered]}; "
                     f"replayed share to client {replayed}: {verdict[replayed]}")


def _unmask_views(
    rnd: _Round, views: Mapping[int, tuple[int, ...]], sigs: Mapping[int, bytes], out: ScenarioOutcome,
    skip: frozenset[int] | set[int] = frozenset(), extra: Mapping[int, Mapping[int, bytes]] | None = None,
) -> tuple[dict[int, list[tuple[int, np.ndarray]]], dict[int, list[tuple[int, np.ndarray]]]]:
    """Ask every live client (but ``skip``) to unmask under its own view, with the signatures of
    its view (plus ``extra[c]``); return the self-mask and key shares obtained, by owner."""
    requests = {}
    for c in rnd.ids:
        if c in rnd.aborted or c in skip:
            continue
        u3 = set(views[c])
        same_view = {v: sig for v, sig in sigs.items() if set(views[v]) == u3}
        same_view.update((extra or {}).get(c, {}))
        h = rnd.holds(c)
        requests[c] = msg.UnmaskRequest(tuple(sorted(h & u3)), tuple(sorted(h - u3)),
                                        _signatures(rnd, c, same_view)).encode()
    self_shares: dict[int, list[tuple[int, np.ndarray]]] = {}
    key_shares: dict[int, list[tuple[int, np.ndarray]]] = {}
    _collect(rnd.call("unmask", requests, out), self_shares, key_shares)
    return self_shares, key_shares


def _split_view(rnd: _Round, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    everyone = tuple(rnd.ids)
    without = tuple(c for c in everyone if c != victim)
    holders = sorted(rnd.holds(victim) - {victim})
    # group A (told v survived) gets just enough holders with v for t' signers; group B the rest
    group_a = {victim, *holders[: max(0, rnd.t - 1)]}
    group_b = set(holders) - group_a
    others = set(everyone) - group_a - group_b
    views = {c: (everyone if c in group_a | others else without) for c in everyone}
    sigs: dict[int, bytes] = {}
    if rnd.malicious:
        sigs = _consistency(rnd, views, out)
    self_shares, key_shares = _unmask_views(rnd, views, sigs, out)
    out.notes.append(
        f"group told v survived: {len(group_a)} (+{len(others)} non-holders), told v dropped: "
        f"{len(group_b)}; obtained {len(self_shares.get(victim, []))} self-mask and "
        f"{len(key_shares.get(victim, []))} key shares of v (t' = {rnd.t})")
    rnd.score(self_shares, key_shares, out)


def _split_view_colluder(rnd: _Round, victim: int, out: ScenarioOutcome, corruption_rate: float) -> None:
    """(e): the split view, helped by a corrupted holder of the victim's shares."""
    from protocols.secagg.graph import _placement

    rnd.honest_until_masked(out)
    ring = _placement(sorted(rnd.ids), rnd.server.graph_seed)
    n, at = len(ring), ring.index(victim)
    colluder = ring[(at - 1) % n]  # a holder of v on every graph (the ring's previous position)
    complete = rnd.server.degree >= n - 1
    # world B (told v dropped): an arc after v -- just t' - 1 honest holders on the complete graph,
    # half the ring on a sparse one (each of its clients then sees t' signers of its view)
    arc = rnd.t - 1 if complete else n // 2
    world_b = {ring[(at + d) % n] for d in range(1, arc + 1)} - {colluder}
    everyone = tuple(rnd.ids)
    without = tuple(c for c in everyone if c != victim)
    views = {c: (without if c in world_b else everyone) for c in everyone}
    sigs: dict[int, bytes] = {}
    forged = b""
    if rnd.malicious:
        sigs = _consistency(rnd, views, out)  # the colluder signs view A like an honest client ...
        forged = _crypto.sign(rnd.identities[colluder],  # ... and view B with its own key
                              _crypto.consistency_payload(rnd.cfg.round_id, msg.encode_ids(without)))
    extra = {c: {colluder: forged} for c in world_b} if forged else {}
    self_shares, key_shares = _unmask_views(rnd, views, sigs, out, skip={colluder}, extra=extra)
    held = rnd.clients[colluder]._shares.get(victim)  # the colluder's own state: both shares of v
    if held is not None:
        key_shares.setdefault(victim, []).append((colluder, held[:_E]))
        self_shares.setdefault(victim, []).append((colluder, held[_E:]))
    out.notes.append(
        f"corrupted holder {colluder} (corruption rate the clients assume: {corruption_rate}); "
        f"{len(world_b)} clients told v dropped; obtained {len(self_shares.get(victim, []))} self-mask "
        f"and {len(key_shares.get(victim, []))} key shares of v (t' = {rnd.t})")
    rnd.score(self_shares, key_shares, out)


def run_scenario(
    scenario: str,
    *,
    clients: int,
    threshold: int,
    degree: int | None,
    malicious: bool,
    length: int = 16,
    seed: int = 0,
    randbytes: Callable[[int], bytes] = os.urandom,
    corruption_rate: float = CORRUPTION_RATE,
) -> ScenarioOutcome:
    """Run one scenario in a fresh round and report what the server got.

    ``corruption_rate`` is the fraction of corrupted clients the honest clients (and the
    server's announced t') assume; ``0.0`` gives the bare-majority t' that
    ``split-view-colluder`` defeats.

    Raises:
        ConfigError: unknown scenario (the message lists them) or too few clients.
    """
    check_scenario(scenario, SCENARIOS, clients, 3, "malicious-server needs")
    out = ScenarioOutcome(scenario, malicious)
    rng = np.random.default_rng(seed)

    def fresh() -> _Round:
        return _Round(clients, threshold, degree, malicious, length, rng, randbytes,
                      corruption_rate=corruption_rate)

    victim = 1
    if scenario == "drop-claim":
        _drop_claim(fresh(), victim, out, both=True)
        _drop_claim(fresh(), victim, out, both=False)
    elif scenario == "key-substitution":
        _key_substitution(fresh(), out, randbytes)
    elif scenario == "share-tampering":
        _share_tampering(fresh(), out)
    elif scenario == "split-view-colluder":
        _split_view_colluder(fresh(), victim, out, corruption_rate)
    else:
        _split_view(fresh(), victim, out)
    out.aborted = sorted(set(out.aborted))
    return out

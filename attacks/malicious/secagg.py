"""``malicious-server``: a server that deviates from SecAgg / SecAgg+ to unmask one client's input.

(For ``protocol = "paillier"`` the same attack runs the scenarios of
:mod:`attacks.malicious_paillier`, :data:`PAILLIER_SCENARIOS`.)

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

Each scenario runs against the configured model (``malicious=True``: signed
advertisements, consistency round) and, as the baseline, against the
semi-honest model (``malicious=False``: the undefended protocol). The metric
is the number of revealed secrets, verified by actually unmasking ``y_v``
(the recovered input matches the true one to the quantization step). Honest
clients that detect a deviation raise :class:`~protocols.errors.IntegrityError`;
the outcome lists who aborted and with which message.

Notes:
    Split view needs two disjoint groups of signers, each reaching the Shamir
    threshold t'. With ``t' > n_v / 2`` (strict majority of v's share holders)
    that is impossible, which is why Bell et al. raise t' to a majority in the
    malicious model. :func:`protocols.secagg.share_threshold` does so for every
    graph, and each client computes t' itself (:class:`protocols.secagg.ClientPolicy`):
    a server that announces a lower t' is refused at setup
    (:mod:`attacks.malicious_lies` runs that lie and every other one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attacks.base import Attack, AttackResult
from protocols import Aggregator, ProtocolError, RoundConfig, shamir
from protocols.prg import MaskExpander
from protocols.secagg import SecAggAggregator, SecAggClient, SecAggServer, _crypto, choose_degree
from protocols.secagg import messages as msg
from protocols.secagg.client import raw_public
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset
from securefedrec.errors import ConfigError

__all__ = ["PAILLIER_SCENARIOS", "SCENARIOS", "MaliciousServerAttack", "ScenarioOutcome", "run_scenario"]

SCENARIOS = ("drop-claim", "key-substitution", "share-tampering", "split-view")
"""SecAgg / SecAgg+ scenarios (this module)."""
PAILLIER_SCENARIOS = ("single-ciphertext", "under-threshold", "split-view", "key-substitution",
                      "bundle-tampering", "ciphertext-replay")
"""Packed-Paillier scenarios (:mod:`attacks.malicious_paillier`)."""
_E = msg.SHARE_ELEMENTS


@dataclass
class ScenarioOutcome:
    """What one malicious-server scenario achieved against one threat model."""

    scenario: str
    malicious: bool
    revealed: int = 0
    """Clients whose input the server unmasked (verified against the true input)."""
    aborted: list[int] = field(default_factory=list)
    """Honest clients that raised an error and stopped."""
    errors: list[str] = field(default_factory=list)
    """Their error messages (first few)."""
    notes: list[str] = field(default_factory=list)
    honest_model: str = "semi-honest"
    """What the baseline (``malicious=False``) model is called for this protocol."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"scenario": self.scenario, "model": "malicious" if self.malicious else self.honest_model,
                "revealed": self.revealed, "clients_aborted": len(self.aborted),
                "errors": self.errors[:3], "notes": self.notes}


class _Round:
    """One SecAgg round whose server messages the attacker may rewrite."""

    def __init__(self, n: int, threshold: int, degree: int | None, malicious: bool, length: int,
                 rng: np.random.Generator, randbytes: Callable[[int], bytes],
                 client_class: type[SecAggClient] = SecAggClient) -> None:
        self.ids = list(range(1, n + 1))
        self.cfg = RoundConfig(round_id=7, threshold=threshold, ring_bits=32, clip_range=1.0,
                               neighbors=degree)
        self.inputs = {c: rng.uniform(-1, 1, length) for c in self.ids}
        ident = {c: Ed25519PrivateKey.from_private_bytes(randbytes(32)) for c in self.ids}
        pki = {c: raw_public(k) for c, k in ident.items()}
        self.length = length
        self.malicious = malicious
        self.server = SecAggServer(self.cfg, self.ids, length, malicious=malicious, randbytes=randbytes)
        # the honest clients' own floor, from the same configuration as the honest server's
        policy = SecAggAggregator(neighbors=degree, malicious=malicious).client_policy(n, self.cfg)
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
    requests = {}
    for c in everyone:
        if c in rnd.aborted:
            continue
        u3 = set(views[c])
        same_view = {v: s for v, s in sigs.items() if set(views[v]) == u3}
        h = rnd.holds(c)
        requests[c] = msg.UnmaskRequest(tuple(sorted(h & u3)), tuple(sorted(h - u3)),
                                        _signatures(rnd, c, same_view)).encode()
    self_shares: dict[int, list[tuple[int, np.ndarray]]] = {}
    key_shares: dict[int, list[tuple[int, np.ndarray]]] = {}
    _collect(rnd.call("unmask", requests, out), self_shares, key_shares)
    out.notes.append(
        f"group told v survived: {len(group_a)} (+{len(others)} non-holders), told v dropped: "
        f"{len(group_b)}; obtained {len(self_shares.get(victim, []))} self-mask and "
        f"{len(key_shares.get(victim, []))} key shares of v (t' = {rnd.t})")
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
) -> ScenarioOutcome:
    """Run one scenario in a fresh round and report what the server got.

    Raises:
        ConfigError: unknown scenario (the message lists them) or too few clients.
    """
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if clients < 3:
        raise ConfigError(f"malicious-server needs >= 3 clients, got {clients}")
    out = ScenarioOutcome(scenario, malicious)
    rng = np.random.default_rng(seed)

    def fresh() -> _Round:
        return _Round(clients, threshold, degree, malicious, length, rng, randbytes)

    victim = 1
    if scenario == "drop-claim":
        _drop_claim(fresh(), victim, out, both=True)
        _drop_claim(fresh(), victim, out, both=False)
    elif scenario == "key-substitution":
        _key_substitution(fresh(), out, randbytes)
    elif scenario == "share-tampering":
        _share_tampering(fresh(), out)
    else:
        _split_view(fresh(), victim, out)
    out.aborted = sorted(set(out.aborted))
    return out


class MaliciousServerAttack(Attack):
    """All malicious-server scenarios against the configured SecAgg / SecAgg+ or packed-Paillier round.

    Args:
        clients: clients in the attacked round (the threshold is
            ``ceil(threshold_fraction * clients)`` from the configuration).
        scenarios: which scenarios to run (default: all of the protocol's, :data:`SCENARIOS`
            or :data:`PAILLIER_SCENARIOS`).
        margin, seed: see :class:`~attacks.base.Attack` (``margin`` is unused: any
            revealed secret is a success).
    """

    name: ClassVar[str] = "malicious-server"
    metric: ClassVar[str] = "secrets_revealed"

    def __init__(self, *, clients: int = 10, scenarios: tuple[str, ...] | None = None,
                 margin: float = 0.0, seed: int = 0) -> None:
        super().__init__(margin=margin, seed=seed)
        known = (*SCENARIOS, *(s for s in PAILLIER_SCENARIOS if s not in SCENARIOS))
        unknown = [s for s in scenarios or () if s not in known]
        if unknown:
            raise ConfigError(f"unknown scenario {unknown[0]!r}; choose from: {', '.join(known)}")
        if clients < 3:
            raise ConfigError(f"clients must be >= 3, got {clients}")
        self.clients = clients
        self.scenarios = None if scenarios is None else tuple(scenarios)

    def _scenarios(self, protocol: str, names: tuple[str, ...]) -> tuple[str, ...]:
        if self.scenarios is None:
            return names
        wrong = [s for s in self.scenarios if s not in names]
        if wrong:
            raise ConfigError(f"scenario {wrong[0]!r} does not apply to protocol {protocol!r}; "
                              f"choose from: {', '.join(names)}")
        return self.scenarios

    def run(
        self,
        config: ExperimentConfig,
        *,
        dataset: Dataset | None = None,
        aggregator: Aggregator | None = None,
        aggregator_options: Mapping[str, Any] | None = None,
    ) -> AttackResult:
        """Run every scenario against the malicious model and (baseline) the semi-honest model.

        For ``paillier`` the baseline is the honest-but-curious Paillier protocol and
        ``aggregator_options`` may give ``key_bits`` (default 512 here) or ``keypair``.
        """
        n = self.clients
        threshold = max(1, math.ceil(config.threshold_fraction * n))
        if config.protocol == "plaintext":
            return self.result(config, n, n, True, note="plaintext: the server reads every input; "
                               "no deviation is needed", clients=n)
        if config.protocol == "paillier":
            from attacks.malicious_paillier import attack_details

            if n < 4:
                raise ConfigError(f"malicious-server against paillier needs clients >= 4, got {n}")
            value, baseline, details = attack_details(
                n, config.threshold_fraction, self._scenarios("paillier", PAILLIER_SCENARIOS),
                aggregator_options or {}, self.seed)
            return self.result(config, value, baseline, value > 0, **details)
        if config.protocol not in ("secagg", "secagg+"):
            raise ConfigError(f"malicious-server drives the SecAgg or Paillier state machines; protocol "
                              f"{config.protocol!r} is not supported (choose secagg, secagg+, paillier or "
                              "plaintext)")
        degree = None if config.protocol == "secagg" else (
            config.neighbors if config.neighbors is not None else choose_degree(n))
        outcomes = []
        for scenario in self._scenarios(config.protocol, SCENARIOS):
            for malicious in (True, False):
                outcomes.append(run_scenario(scenario, clients=n, threshold=threshold, degree=degree,
                                             malicious=malicious, seed=self.seed))
        value = sum(o.revealed for o in outcomes if o.malicious)
        baseline = sum(o.revealed for o in outcomes if not o.malicious)
        return self.result(
            config, value, baseline, value > 0, clients=n, threshold=threshold,
            share_threshold=_share_threshold(n, threshold, degree),
            scenarios={o.scenario: o.as_dict() for o in outcomes if o.malicious},
            semi_honest={o.scenario: o.as_dict() for o in outcomes if not o.malicious},
            baseline_is="the same scenarios against the semi-honest protocol (no signatures, "
                        "no consistency round)",
        )


def _share_threshold(n: int, threshold: int, degree: int | None) -> int:
    from protocols.secagg import effective_degree, share_threshold

    d = effective_degree(n, degree)
    return share_threshold(threshold, n, d, True)

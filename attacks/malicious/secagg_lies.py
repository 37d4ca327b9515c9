"""A malicious SecAgg / SecAgg+ server that lies in every field it sends, one named scenario per lie.

Each scenario runs a fresh malicious-model round (signed keys, consistency
round) of honest :class:`~protocols.secagg.SecAggClient` objects, with the
server rewriting one field of its messages, and then follows up with the
attack that the lie is meant to enable -- a split view (half of the victim's
share holders told it survived, the other half that it dropped), or a request
for both of its secrets -- and counts the clients whose input it unmasked
(verified against the true input, as in :mod:`attacks.malicious.secagg`).

Setup lies (the server's parameters, refused at the advertise stage by a client
whose :class:`~protocols.secagg.ClientPolicy` bounds them):

``split-view-low-threshold``  threshold 1 and share threshold 1, then the split view
                              (the auditor's attack of issue 14).
``threshold``                 release threshold 1 (t' from the honest rule), split view.
``share-threshold``           Shamir threshold t' = 1 only, split view.
``degree``                    a 2-regular graph instead of the complete one.
``graph-seed``                a seed of the server's choosing instead of the derived one.
``ring-bits``                 a 16-bit ring instead of the configured 32 bits.
``clip-range``                a clipping range 1000 times smaller.
``round-id``                  the setup of another round.

Stage-message lies (refused by the protocol's own checks):

``survivor-list``    U3 without the victim although its masked input arrived, then
                     a second unmask request for the victim's self-mask shares.
``dropout-list``     the victim signed as a survivor but listed as dropped.
``replayed-stage``   the setup and the unmask request sent again after the round.
``reordered-stage``  unmask requests sent before the consistency round.

The baseline is :class:`TrustingClient`: the client as it was before issue 14,
which takes the thresholds, degree, graph seed, ring and clipping range from
the server's Setup and only range-checks them. Against it the setup lies that
lower t' reveal the victim's input; against :class:`SecAggClient` no lie
reveals anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from attacks.malicious.outcomes import SECAGG_LIES, ScenarioOutcome, check_scenario
from attacks.malicious.secagg import _collect, _consistency, _Round, _signatures, _split_view
from protocols import FixedPoint, ProtocolError
from protocols.secagg import SecAggClient, effective_degree, harary_neighbors, share_threshold
from protocols.secagg import messages as msg

__all__ = ["LIES", "TrustingClient", "run_lie"]

LIES = SECAGG_LIES
"""Every lie, one scenario each (module docstring)."""
_SETUP_LIES = LIES[:8]
_Shares = dict[int, list[tuple[int, np.ndarray]]]


class TrustingClient(SecAggClient):
    """Baseline: the client before issue 14, which takes every security parameter from the Setup.

    It keeps the range checks of :meth:`protocols.secagg.messages.Setup.decode` and the
    graph's regularity check, and uses the server's ``share_threshold`` as t'. For the
    attack harness only: it shows what the client-side checks of
    :class:`~protocols.secagg.ClientPolicy` prevent.
    """

    def _enforce_policy(self, setup: msg.Setup) -> int:
        n = len(setup.client_ids)
        if setup.degree != effective_degree(n, setup.degree):
            raise self._fail("setup", f"no {setup.degree}-regular graph on {n} clients")
        return setup.share_threshold


def _lie_in_setup(rnd: _Round, lie: str) -> None:
    """Rewrite the server's parameters, so that its Setup (and everything after) carries the lie."""
    srv, cfg, n = rnd.server, rnd.server.config, len(rnd.ids)
    if lie in ("split-view-low-threshold", "threshold"):
        srv.config = replace(cfg, threshold=1)
        low = share_threshold(1, n, srv.degree, True)
        srv.share_threshold = 1 if lie == "split-view-low-threshold" else low
    elif lie == "share-threshold":
        srv.share_threshold = 1
    elif lie == "degree":
        srv.degree = effective_degree(n, 2)
        srv.neighbors = harary_neighbors(rnd.ids, srv.degree, srv.graph_seed)
        srv.share_threshold = share_threshold(cfg.threshold, n, srv.degree, True)
    elif lie == "graph-seed":
        srv.graph_seed = bytes(range(32))
        srv.neighbors = harary_neighbors(rnd.ids, srv.degree, srv.graph_seed)
    elif lie == "ring-bits":
        srv.config = replace(cfg, ring_bits=16)
        srv.encoding = FixedPoint.for_sum(n, cfg.clip_range, 16)
    elif lie == "clip-range":
        srv.config = replace(cfg, clip_range=cfg.clip_range / 1000)
        srv.encoding = FixedPoint.for_sum(n, srv.config.clip_range, cfg.ring_bits)
    elif lie == "round-id":
        srv.config = replace(cfg, round_id=cfg.round_id + 1)
    rnd.cfg = srv.config
    rnd.t = srv.share_threshold


def _requests(rnd: _Round, views: Mapping[int, tuple[int, ...]], sigs: Mapping[int, bytes],
              asked: list[int]) -> dict[int, bytes]:
    """Unmask requests that follow each client's view of U3 (signatures of the same view only)."""
    out = {}
    for c in asked:
        if c in rnd.aborted:
            continue
        u3, h = set(views[c]), rnd.holds(c)
        same = {v: s for v, s in sigs.items() if set(views[v]) == u3}
        out[c] = msg.UnmaskRequest(tuple(sorted(h & u3)), tuple(sorted(h - u3)),
                                   _signatures(rnd, c, same)).encode()
    return out


def _survivor_list(rnd: _Round, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    without = tuple(c for c in rnd.ids if c != victim)
    views = dict.fromkeys(rnd.ids, without)
    sigs = _consistency(rnd, views, out)  # the victim refuses: it is missing from the set
    self_shares: _Shares = {}
    key_shares: _Shares = {}
    asked = [c for c in without if victim in rnd.holds(c)]
    _collect(rnd.call("unmask", _requests(rnd, views, sigs, asked), out), self_shares, key_shares)
    # then ask the same clients for the victim's self-mask share as well
    again = {c: msg.UnmaskRequest(tuple(sorted(rnd.holds(c))), ()).encode() for c in asked}
    _collect(rnd.call("unmask", again, out), self_shares, key_shares)
    rnd.score(self_shares, key_shares, out)


def _dropout_list(rnd: _Round, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    everyone = tuple(rnd.ids)
    views = dict.fromkeys(rnd.ids, everyone)
    sigs = _consistency(rnd, views, out)
    holders = sorted(c for c in rnd.ids if c != victim and victim in rnd.holds(c))
    half = set(holders[: len(holders) // 2])
    requests = _requests(rnd, views, sigs, [c for c in holders if c in half])
    for c in holders:  # the other half is asked for the victim's key share: it signed v as a survivor
        if c not in half and c not in rnd.aborted:
            h = rnd.holds(c) - {victim}
            requests[c] = msg.UnmaskRequest(tuple(sorted(h)), (victim,), _signatures(rnd, c, sigs)).encode()
    self_shares: _Shares = {}
    key_shares: _Shares = {}
    _collect(rnd.call("unmask", requests, out), self_shares, key_shares)
    rnd.score(self_shares, key_shares, out)


def _replayed_stage(rnd: _Round, victim: int, out: ScenarioOutcome) -> None:
    requests = rnd.honest_until_masked(out)
    sigs = {c: msg.ConsistencySignature.decode(r).signature
            for c, r in rnd.call("consistency", requests, out).items()}
    self_shares: _Shares = {}
    key_shares: _Shares = {}
    signed = {c: msg.ConsistencySignature(c, s).encode() for c, s in sigs.items()}
    _collect(rnd.call("unmask", rnd.server.receive_signatures(signed), out), self_shares, key_shares)
    # the round is over; the server replays its setup, then an unmask request that calls the victim dropped
    rnd.call("advertise", rnd.setups, out)
    replay = {c: msg.UnmaskRequest(tuple(sorted(rnd.holds(c) - {victim})), (victim,),
                                   _signatures(rnd, c, sigs)).encode()
              for c in rnd.ids if c != victim}
    _collect(rnd.call("unmask", replay, out), self_shares, key_shares)
    rnd.score(self_shares, key_shares, out)


def _reordered_stage(rnd: _Round, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    everyone = tuple(rnd.ids)
    without = tuple(c for c in everyone if c != victim)
    holders = sorted(c for c in rnd.ids if c != victim and victim in rnd.holds(c))
    told_dropped = set(holders[len(holders) // 2:])
    views = {c: (without if c in told_dropped else everyone) for c in everyone}
    self_shares: _Shares = {}
    key_shares: _Shares = {}
    _collect(rnd.call("unmask", _requests(rnd, views, {}, list(everyone)), out), self_shares, key_shares)
    rnd.score(self_shares, key_shares, out)


def run_lie(
    lie: str,
    *,
    clients: int = 6,
    length: int = 8,
    seed: int = 0,
    client_class: type[SecAggClient] = SecAggClient,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> ScenarioOutcome:
    """Run one lie in a fresh malicious-model round (complete graph, threshold n/2) and score it.

    ``client_class`` is :class:`SecAggClient` (the defence) or :class:`TrustingClient`
    (the baseline); the outcome's ``malicious`` is ``False`` for the baseline.

    Raises:
        ConfigError: unknown lie (the message lists them) or fewer than 4 clients.
    """
    check_scenario(lie, LIES, clients, 4, "the lies need", what="lie")
    trusting = client_class is not SecAggClient
    out = ScenarioOutcome(lie, not trusting, honest_model="trusting client")
    threshold = (clients + 1) // 2
    rnd = _Round(clients, threshold, None, True, length, np.random.default_rng(seed), randbytes,
                 client_class=client_class)
    victim = rnd.ids[0]
    try:
        if lie in _SETUP_LIES:
            _lie_in_setup(rnd, lie)
            _split_view(rnd, victim, out)
        elif lie == "survivor-list":
            _survivor_list(rnd, victim, out)
        elif lie == "dropout-list":
            _dropout_list(rnd, victim, out)
        elif lie == "replayed-stage":
            _replayed_stage(rnd, victim, out)
        else:
            _reordered_stage(rnd, victim, out)
    except ProtocolError as exc:  # the server side gave up: every honest client had refused
        out.notes.append(f"round ended at the server: {type(exc).__name__}: {exc}")
    out.aborted = sorted(set(out.aborted))
    return out

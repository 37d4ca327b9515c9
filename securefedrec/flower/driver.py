"""The server side: drive a SecAgg / SecAgg+ or packed-Paillier round stage by stage over Flower messages.

:class:`GridLink` turns Flower's ``Grid`` into "send one message to each of
these nodes, give me the replies that came back in time"; :func:`secagg_round`
drives a :class:`~protocols.secagg.SecAggServer` through it, :func:`paillier_round`
a :class:`~protocols.paillier.PaillierServer`; :class:`FederatedRun` is the
federated loop (the in-process :class:`~securefedrec.simulation.Simulation`'s
sampling, broadcast, round config, DP accounting and server optimizer, with the
clients -- training, noise shares, error feedback -- on SuperNodes).

Dropouts: a node that does not answer a stage within the timeout, answers
with an error, or answers garbage, is dropped for the rest of the round; its
clients simply miss from that stage's messages, which is the protocol's own
dropout path (the survivors' exact sum, or a clean abort below threshold).
A node's reply is accepted only for the clients it was asked about.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocols import AggregationAborted, RoundConfig, Stage, aggregator_class, protocols_where
from protocols.base import abort_if_below_threshold
from protocols.secagg import SecAggAggregator, SecAggServer, ServerResult
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError, PrivacyBudgetExhausted, SecureFedRecError
from securefedrec.flower.messages import FlowerStage, StageMessage, pack, paillier_round_info, unpack
from securefedrec.flower.node import hosted_clients
from securefedrec.flower.settings import DeploymentSettings

__all__ = ["FederatedRun", "GridLink", "NodeLink", "RoundOutcome", "discover", "paillier_round",
           "secagg_round", "write_result"]

log = logging.getLogger("securefedrec.flower")

class NodeLink(Protocol):
    """What the driver needs from a transport (Flower's Grid, or a fake in tests)."""

    def node_ids(self) -> list[int]:
        """The connected nodes."""

    def exchange(self, outbox: Mapping[int, StageMessage], timeout: float) -> dict[int, StageMessage]:
        """Send ``outbox[node]`` to each node; return the valid replies that arrive within ``timeout``."""


class GridLink:
    """:class:`NodeLink` over a Flower ``Grid``: push a stage's messages, pull replies until all or timeout.

    Args:
        grid: the ServerApp's grid.
        ttl: message time-to-live in seconds (a late reply is discarded by the SuperLink).
        poll: seconds between pulls (Flower's own ``send_and_receive`` waits 3 s).
    """

    def __init__(self, grid: Any, ttl: float | None = None, poll: float = 0.2) -> None:
        self.grid = grid
        self.ttl = ttl
        self.poll = poll

    def node_ids(self) -> list[int]:
        """The SuperNodes connected to the SuperLink now."""
        return sorted(int(n) for n in self.grid.get_node_ids())

    def exchange(self, outbox: Mapping[int, StageMessage], timeout: float) -> dict[int, StageMessage]:
        """One stage: push every message, pull replies until all came or ``timeout`` passed."""
        from flwr.app import Message

        if not outbox:
            return {}
        stage = next(iter(outbox.values())).stage
        messages = [
            Message(content=pack(m), dst_node_id=nid, message_type=m.stage.value,
                    group_id=str(m.round_id), ttl=self.ttl)
            for nid, m in outbox.items()
        ]
        pending = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + timeout
        received: list[Any] = []
        while pending:
            got = list(self.grid.pull_messages(pending))
            received.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))
        replies: dict[int, StageMessage] = {}
        for reply in received:
            nid = int(reply.metadata.src_node_id)
            if nid not in outbox:
                log.warning("%s: reply from node %s, which was not asked; ignored", stage.name, nid)
                continue
            if reply.has_error():
                log.warning("%s: node %s answered with an error (%s); dropped", stage.name, nid,
                            reply.error.reason)
                continue
            try:
                replies[nid] = unpack(reply.content, expect=stage, where=f"node {nid}, {stage.name}")
            except DecodeError as exc:
                log.warning("%s; node %s dropped", exc, nid)
        return replies


@dataclass
class RoundOutcome:
    """What one secure round over Flower produced."""

    total: np.ndarray
    """The decoded sum of the survivors' protocol inputs (length: the coordinates sent)."""
    survivors: frozenset[int]
    step: float
    """The quantization step of the round's fixed-point encoding."""
    bytes_up: dict[int, int] = field(default_factory=dict)
    """Protocol bytes each client sent (the payloads, without Flower's framing)."""
    bytes_down: dict[int, int] = field(default_factory=dict)
    seconds_server: float = 0.0
    answered: dict[str, int] = field(default_factory=dict)
    """Stage name -> number of clients whose message arrived."""
    result: ServerResult | None = None
    """SecAgg's own server result (``None`` for Paillier)."""


Info = Mapping[str, int | float | str]


class _Exchanges:
    """One round's stages: group per-client payloads by node, count bytes, keep who answered.

    ``trace`` (stage name -> clients whose reply arrived) is filled as the round goes, so a
    caller still knows who answered when the round aborts half-way.
    """

    def __init__(self, link: NodeLink, node_of: Mapping[int, int], round_id: int, sampled: Sequence[int],
                 trace: dict[str, set[int]] | None) -> None:
        self.link = link
        self.node_of = node_of
        self.round_id = round_id
        self.sampled = tuple(sampled)
        self.up = dict.fromkeys(sampled, 0)
        self.down = dict.fromkeys(sampled, 0)
        self.answered: dict[str, int] = {}
        self.trace = trace if trace is not None else {}
        self.seconds = 0.0

    def __call__(self, stage: FlowerStage, msgs: Mapping[int, bytes], timeout: float, *,
                 view: np.ndarray | None = None, info: Info | None = None,
                 client_info: Mapping[int, Info] | None = None) -> dict[int, bytes]:
        """Send ``msgs[client]`` to each client's node; return the replies of the clients that answered.

        ``info`` goes to every node; ``client_info[c]`` as ``<key>.<c>`` to the node hosting ``c``.
        """
        by_node: dict[int, dict[int, bytes]] = {}
        for cid, m in msgs.items():
            by_node.setdefault(self.node_of[cid], {})[cid] = m
            self.down[cid] += len(m)
        outbox = {}
        for nid, payload in by_node.items():
            fields = dict(info or {})
            for cid in payload:
                fields.update({f"{k}.{cid}": v for k, v in (client_info or {}).get(cid, {}).items()})
            outbox[nid] = StageMessage(stage, self.round_id, payload, self.sampled, view, fields)
        replies = self.link.exchange(outbox, timeout)
        out: dict[int, bytes] = {}
        for nid, reply in replies.items():
            asked = by_node.get(nid, {})
            for cid, m in reply.payload.items():
                if cid not in asked:
                    log.warning("round %s, %s: node %s answered for client %s it was not asked about; "
                                "ignored", self.round_id, stage.name, nid, cid)
                    continue
                out[cid] = m
                self.up[cid] += len(m)
        self.answered[stage.name] = self.answered.get(stage.name, 0) + len(out)
        self.trace.setdefault(stage.name, set()).update(out)
        lost = sorted(set(msgs) - set(out))
        if lost:
            log.warning("round %s, %s: no answer from clients %s (dropped)", self.round_id, stage.name,
                        lost[:20])
        return out

    def on_server(self, step: Any, *args: Any) -> Any:
        """Run a server step, counting its seconds."""
        t0 = time.perf_counter()
        try:
            return step(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def secagg_round(
    link: NodeLink,
    server: SecAggServer,
    node_of: Mapping[int, int],
    view: np.ndarray,
    *,
    malicious: bool,
    train_timeout: float,
    stage_timeout: float,
    info: Info | None = None,
    client_info: Mapping[int, Info] | None = None,
    trace: dict[str, set[int]] | None = None,
) -> RoundOutcome:
    """Drive ``server`` through a round: TRAIN (+advertise), share keys, masked input, [consistency], unmask.

    Args:
        link: the transport.
        server: a fresh server for the round's sampled clients.
        node_of: client id -> the node hosting it.
        view: the global vector the clients train from.
        malicious: whether the consistency stage runs.
        train_timeout, stage_timeout: seconds to wait for the first / the other stages.
        info, client_info: public fields of the TRAIN message (the DP parameters; per client,
            the error-feedback outcome), see :mod:`securefedrec.flower.update`.
        trace: filled with stage name -> clients that answered (also when the round aborts).

    Raises:
        AggregationAborted: fewer than ``threshold`` clients survived a stage.
    """
    x = _Exchanges(link, node_of, server.config.round_id, server.client_ids, trace)
    msgs = x.on_server(server.setup)
    msgs = x(FlowerStage.TRAIN, msgs, train_timeout, view=view, info=info, client_info=client_info)
    msgs = x.on_server(server.receive_advertisements, msgs)
    msgs = x(FlowerStage.SHARE_KEYS, msgs, stage_timeout)
    msgs = x.on_server(server.receive_shares, msgs)
    msgs = x(FlowerStage.MASKED_INPUT, msgs, stage_timeout)
    msgs = x.on_server(server.receive_masked_inputs, msgs)
    if malicious:
        msgs = x(FlowerStage.CONSISTENCY, msgs, stage_timeout)
        msgs = x.on_server(server.receive_signatures, msgs)
    msgs = x(FlowerStage.UNMASK, msgs, stage_timeout)
    result = x.on_server(server.receive_unmask, msgs)
    total = x.on_server(result.decode)
    return RoundOutcome(total, frozenset(result.survivors), float(result.encoding.step), x.up, x.down,
                        x.seconds, x.answered, result)


def paillier_round(
    link: NodeLink,
    directory: Mapping[int, bytes],
    config: RoundConfig,
    sampled: Sequence[int],
    node_of: Mapping[int, int],
    view: np.ndarray,
    *,
    length: int,
    train_timeout: float,
    stage_timeout: float,
    info: Info | None = None,
    client_info: Mapping[int, Info] | None = None,
    trace: dict[str, set[int]] | None = None,
    malicious: bool = False,
) -> RoundOutcome:
    """Drive a :class:`~protocols.paillier.PaillierServer` through a packed-Paillier round over Flower.

    The stages of :mod:`protocols.paillier.aggregator`, one Flower message each: train + advert,
    advert list (the lowest advertiser holds the key; if it does not answer, the next one that
    did is asked, :attr:`FlowerStage.PAILLIER_HOLD`), sealed keys + acknowledgements, ciphertexts
    (the server multiplies them), and decryption of the product by one key-holding survivor
    (the next one if it does not answer). The server never holds the private key. With
    ``malicious`` the ciphertexts are signed, a consistency stage
    (:attr:`FlowerStage.PAILLIER_CONSISTENCY`) collects the survivors' signatures on the
    survivor set (fewer than t' = n // 2 + 1 abort the round) and the decryptor, one of the
    signers, receives every survivor's signed ciphertexts and checks them before it decrypts
    (:mod:`protocols.paillier.aggregator`).

    Args:
        directory: client id -> raw Ed25519 identity key (what the nodes reported; each client
            checks its peers against its own out-of-band PKI).
        config: the round's protocol settings; ``sampled``: the round's clients.
        length: the number of coordinates each client sends.
        malicious: the malicious-server model (the nodes run it when their settings say so).
        The other arguments as in :func:`secagg_round`.

    Raises:
        AggregationAborted: fewer than ``threshold`` clients at a stage (malicious model: fewer
            than t' consistency signatures), or nobody left to hold the key or decrypt.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from protocols.paillier import PaillierServer
    from protocols.paillier.aggregator import round_layout

    r = config.round_id
    x = _Exchanges(link, node_of, r, sampled, trace)
    keys = {c: Ed25519PublicKey.from_public_bytes(directory[c]) for c in sampled if c in directory}
    server = PaillierServer(keys, config, len(sampled), malicious=malicious)

    def aborted(why: str) -> AggregationAborted:
        return AggregationAborted(f"round {r}: {why}; round aborted, nothing revealed", survivors=0,
                                  threshold=config.threshold, round_id=r)

    adverts = x(FlowerStage.PAILLIER_TRAIN, dict.fromkeys(sampled, b""), train_timeout, view=view,
                info={**paillier_round_info(config, length), **(info or {})}, client_info=client_info)
    abort_if_below_threshold(len(adverts), config, Stage.ADVERTISE)
    advert_list = x.on_server(server.collect_adverts, adverts)
    holder = min(adverts)
    seen = x(FlowerStage.PAILLIER_ADVERTS, dict.fromkeys(adverts, advert_list), stage_timeout,
             info={"holder": holder})
    bundle = seen.get(holder) or None
    for candidate in sorted(seen):  # the lowest advertiser that answers holds the key
        if bundle is not None:
            break
        if candidate == holder:
            continue
        holder = candidate
        bundle = x(FlowerStage.PAILLIER_HOLD, {candidate: b""}, stage_timeout).get(candidate) or None
    if bundle is None:
        raise aborted("no advertiser answered as the Paillier key holder")
    deliveries = x.on_server(server.relay_key, holder, bundle)
    acks = x(FlowerStage.PAILLIER_KEY, {c: m for c, m in deliveries.items() if c in seen}, stage_timeout)
    x.on_server(server.collect_acks, acks)
    abort_if_below_threshold(len(server.key_holders), config, Stage.SHARE_KEYS)
    holders = sorted(server.key_holders)
    ranks = {c: {"rank": i} for i, c in enumerate(holders)}  # the order of the in-process senders
    ciphertexts = x(FlowerStage.PAILLIER_ENCRYPT, dict.fromkeys(holders, b""), stage_timeout,
                    client_info=ranks)
    x.on_server(server.collect_ciphertexts, ciphertexts)  # aborts below threshold
    decryptors = sorted(server.survivors)
    if malicious:  # the survivors sign S; fewer than t' signatures abort; only a signer may decrypt
        request = x.on_server(server.consistency_request)
        signatures = x(FlowerStage.PAILLIER_CONSISTENCY, dict.fromkeys(server.survivors, request),
                       stage_timeout)
        x.on_server(server.collect_signatures, signatures)
        decryptors = server.signers
    aggregate = x.on_server(server.aggregate_message)
    if server.public is None:  # set by relay_key; kept for the type checker
        raise aborted("no public key")
    fp, layout = round_layout(len(sampled), config, server.public)
    for decryptor in decryptors:
        plain = x(FlowerStage.PAILLIER_DECRYPT, {decryptor: aggregate}, stage_timeout).get(decryptor)
        if plain is None:
            continue
        try:
            total = x.on_server(server.decode_sum, plain, fp, layout, length)
        except DecodeError as exc:
            log.warning("round %s: the plaintext sum from client %s is malformed (%s); asking the next", r,
                        decryptor, exc)
            continue
        return RoundOutcome(total, frozenset(server.survivors), float(fp.step), x.up, x.down, x.seconds,
                            x.answered)
    raise aborted("no key-holding client left to decrypt the sum")


def discover(link: NodeLink, num_clients: int, settings: DeploymentSettings,
             identities: dict[int, bytes] | None = None) -> dict[int, int]:
    """Wait for ``min_nodes`` nodes, ask each its partition, return client id -> node id.

    ``identities``, when given, is filled with the public identity keys the nodes report for
    the clients they host (client id -> raw Ed25519 key; a report for another node's client
    is ignored).

    Raises:
        ConfigError: too few nodes in time, nodes that disagree on ``num-partitions``,
            two nodes with one partition, or clients that no node hosts.
    """
    deadline = time.monotonic() + settings.node_wait
    nodes = link.node_ids()
    while len(nodes) < settings.min_nodes:
        if time.monotonic() > deadline:
            raise ConfigError(f"min-nodes: {settings.min_nodes} SuperNodes expected, {len(nodes)} connected "
                              f"after {settings.node_wait:.0f} s")
        time.sleep(1.0)
        nodes = link.node_ids()
    hello = {nid: StageMessage(FlowerStage.HELLO, 0) for nid in nodes}
    replies = link.exchange(hello, settings.stage_timeout)
    owner: dict[int, int] = {}  # partition -> node
    counts = set()
    for nid, reply in sorted(replies.items()):
        pid, count = reply.info.get("partition-id"), reply.info.get("num-partitions")
        if not isinstance(pid, int) or not isinstance(count, int):
            log.warning("node %s did not report its partition; ignored", nid)
            continue
        if pid in owner:
            raise ConfigError(f"node config: nodes {owner[pid]} and {nid} both have partition-id {pid}")
        owner[pid] = nid
        counts.add(count)
    if len(counts) != 1:
        raise ConfigError(f"node config: nodes disagree on num-partitions ({sorted(counts)})")
    count = counts.pop()
    node_of: dict[int, int] = {}
    for pid, nid in owner.items():
        for c in hosted_clients(pid, count, num_clients):
            node_of[c] = nid
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise ConfigError(f"{len(missing)} of {num_clients} clients are hosted by no SuperNode "
                          f"(first: {missing[:5]}); partitions present: {sorted(owner)} of {count}")
    if identities is not None:
        for nid, reply in sorted(replies.items()):
            for key, value in reply.info.items():
                name, _, cid = key.partition(".")
                if name != "pki" or not cid.isdigit() or node_of.get(int(cid)) != nid:
                    continue
                try:
                    raw = bytes.fromhex(str(value))
                except ValueError:
                    raw = b""
                if len(raw) != 32:
                    raise ConfigError(f"node {nid}: field {key!r}: an identity key must be 32 bytes in hex")
                identities[int(cid)] = raw
    return node_of


class FederatedRun:
    """The federated loop of a deployment: sample, broadcast, secure round, server optimizer.

    The server builds the same :class:`~securefedrec.simulation.Simulation` as an
    in-process run, but uses only its public parts (item count and layout,
    initial global vector, Poisson sampling, round configuration, broadcast
    codec, server optimizer, the DP accountant); the clients train on the SuperNodes.

    What runs: protocols ``secagg``, ``secagg+`` and ``paillier``; ``dp`` ``none``,
    ``user`` (the accountant is checked before a round and charged after it, as in
    the simulator; each node adds its clients' noise shares) or ``record`` (each node
    runs DP-SGD for its silos, their state kept on the node; the server keeps every
    silo's accountant from the public sigma, sample rate and steps, checks it before
    a round and charges each sampled silo after it, :mod:`securefedrec.flower.update`);
    compression ``none``, ``q8``, ``q16``, ``randk:F`` (error feedback on the nodes,
    the server scatters the sum back) and ``mod:B`` (nodes rotate with the public
    signs, the server sizes the ring from the last sum and rotates the sum back);
    the broadcast is compressed exactly as in the simulator.

    Args:
        config, settings: the run.
        link: the transport to the SuperNodes.
    """

    def __init__(self, config: ExperimentConfig, settings: DeploymentSettings, link: NodeLink) -> None:
        from securefedrec.compression import parse_compression
        from securefedrec.dpsgd import SiloDPSGD
        from securefedrec.privacy import UserLevelPrivacy
        from securefedrec.simulation import Simulation

        if config.threat_model != "default" and (config.threat_model == "malicious") != settings.malicious:
            raise ConfigError(
                f"threat-model: {config.threat_model!r} disagrees with the deployment key "
                f"malicious={str(settings.malicious).lower()}; on Flower the deployment key decides (set "
                "malicious=true and the nodes' identity-key and pki, or leave threat-model at 'default')")
        compressor = parse_compression(config.compression)
        if not compressor.secure_ok:
            raise ConfigError(f"compression: {compressor.spec} cannot run over the securefedrec Flower "
                              "transport: its indices reveal which items each user rated; use randk:F, q8, "
                              "q16, mod:B or none")
        if not aggregator_class(config.protocol).secure:
            raise ConfigError(f"protocol: {config.protocol!r} cannot run over the securefedrec Flower "
                              f"transport; use one of {', '.join(protocols_where(lambda cls: cls.secure))}")
        if config.dropout > 0:
            log.warning("dropout %.2f is a simulation setting; on the deployment engine only real "
                        "dropouts happen", config.dropout)
        self.config = config
        self.settings = settings
        self.link = link
        # calibrates sigma (dp user; each silo's with dp record) before round 1; its aggregator sizes the
        # SecAgg+ graph for the deployment's threat model, as each node checks (node.own_min_degree)
        model = "malicious" if settings.malicious else "semi-honest"
        self.sim = Simulation(dataclasses.replace(config, threat_model=model)
                              if config.threat_model == "default" else config)
        if self.sim.privacy is not None and not isinstance(self.sim.privacy, UserLevelPrivacy | SiloDPSGD):
            raise ConfigError(f"dp: the {type(self.sim.privacy).__name__} mechanism does not run on the "
                              "Flower deployment engine yet; dp 'user' runs with the Gaussian mechanism "
                              "(noise shares added on the nodes)")
        self.compressor = compressor
        aggregator = self.sim.aggregator
        self.secagg: SecAggAggregator | None = (aggregator if isinstance(aggregator, SecAggAggregator)
                                                 else None)
        self.node_of: dict[int, int] = {}
        self.directory: dict[int, bytes] = {}
        """Client id -> raw Ed25519 identity key, as the nodes reported it (Paillier)."""
        self.outcomes: dict[int, tuple[int, bool]] = {}
        """Client id -> (last round whose first reply arrived, whether the client was in its sum)."""
        self.rounds: list[dict[str, Any]] = []
        self.totals: list[np.ndarray] = []
        self.stopped: str | None = None

    def connect(self) -> None:
        """Discover the nodes (and, for Paillier, the clients' identity keys)."""
        self.node_of = discover(self.link, self.sim.pool.num_clients, self.settings, self.directory)
        if aggregator_class(self.config.protocol).homomorphic:
            missing = sorted(set(self.node_of) - set(self.directory))
            if missing:
                raise ConfigError(f"protocol {self.config.protocol}: no identity key for clients "
                                  f"{missing[:10]} "
                                  f"({len(missing)} in all); give their nodes identity-key and pki "
                                  "(node config)")

    def run_round(self) -> dict[str, Any]:
        """Run the next round; return its record.

        Raises:
            PrivacyBudgetExhausted: the round would exceed the budget (nothing changed).
        """
        from securefedrec import streams
        from securefedrec.compression import unrotate
        from securefedrec.dpsgd import SiloDPSGD
        from securefedrec.flower.update import dp_info, feedback_info, rotation, selection

        sim, cfg = self.sim, self.config
        r = sim.next_round
        if sim.privacy is not None:
            sim.privacy.check_round(r)  # raises PrivacyBudgetExhausted before anything changes
        t0 = time.perf_counter()
        sampled = sim.sample(r)
        record: dict[str, Any] = {"round": r + 1, "clients": len(sampled), "dropped": 0, "aborted": False,
                                  "bytes_up": 0, "bytes_down": 0, "rmse": None, "mae": None, "epsilon": None,
                                  "server_epsilon": None}
        total = np.zeros_like(sim.global_vec)
        if sampled:
            view, bytes_down = sim.downlink.broadcast(
                sim.global_vec, sampled, np.random.default_rng([cfg.seed, r, streams.DOWNLINK]))
            rc = sim.round_config(r, len(sampled))
            idx = selection(self.compressor, sim.layout.length, cfg.seed, r)
            signs = rotation(self.compressor, sim.layout.length, cfg.seed, r)
            length = sim.layout.length if idx is None else int(idx.size)
            info = dp_info(sim.privacy, rc.threshold, sampled)
            client_info = feedback_info(self.outcomes, sampled) if idx is not None else None
            trace: dict[str, set[int]] = {}
            survivors: frozenset[int] = frozenset()
            try:
                if self.secagg is None:
                    outcome = paillier_round(
                        self.link, self.directory, rc, sampled, self.node_of, view, length=length,
                        train_timeout=self.settings.train_timeout, stage_timeout=self.settings.stage_timeout,
                        info=info, client_info=client_info, trace=trace, malicious=self.settings.malicious)
                else:
                    server = SecAggServer(rc, sampled, length,
                                          neighbors=self.secagg.degree_for(len(sampled), rc),
                                          malicious=self.settings.malicious)
                    outcome = secagg_round(
                        self.link, server, self.node_of, view, malicious=self.settings.malicious,
                        train_timeout=self.settings.train_timeout, stage_timeout=self.settings.stage_timeout,
                        info=info, client_info=client_info, trace=trace)
            except AggregationAborted as exc:
                record.update(aborted=True, dropped=len(sampled) - exc.survivors, error=str(exc))
                log.warning("round %s aborted: %s", r + 1, exc)
            except SecureFedRecError as exc:  # an integrity failure aborts the round, never the run
                record.update(aborted=True, dropped=len(sampled), error=f"{type(exc).__name__}: {exc}")
                log.warning("round %s aborted: %s", r + 1, exc)
            else:
                survivors = outcome.survivors
                if signs is not None:  # mod:B: size the next ring by this sum, then undo the rotation
                    sim.uplink.observe(outcome.total, len(survivors))
                    total = unrotate(outcome.total, signs)
                elif idx is None:
                    total = outcome.total
                else:  # random-k: scatter the sum of the selected coordinates back
                    total[idx] = outcome.total
                mean = total / (cfg.sample_rate * sim.pool.num_clients)
                sim.global_vec = sim.optimizer.step(sim.global_vec, mean, coords=idx)
                record.update(
                    dropped=len(sampled) - len(survivors),
                    survivors=sorted(survivors),
                    bytes_up=sum(outcome.bytes_up.values()),
                    bytes_down=bytes_down + sum(outcome.bytes_down.values()),
                    seconds_server=outcome.seconds_server,
                    answered=outcome.answered,
                    quantization_step=outcome.step,
                )
                if sim.privacy is not None:
                    record["noise_std"] = sim.privacy.realized_std(len(survivors), rc.threshold)
            first = FlowerStage.PAILLIER_TRAIN if self.secagg is None else FlowerStage.TRAIN
            for c in trace.get(first.name, ()):  # what each node settles its error feedback with
                self.outcomes[c] = (r, c in survivors)
        if sampled and isinstance(sim.privacy, SiloDPSGD):  # the sampled silos trained on their nodes
            sim.privacy.charge(sampled)
        if sim.privacy is not None:
            sim.privacy.count_participants(sampled)
            record["epsilon"] = sim.privacy.commit_round(r)
            record["server_epsilon"] = sim.privacy.server_epsilon()
        record["seconds"] = time.perf_counter() - t0
        sim.next_round = r + 1
        self.rounds.append(record)
        self.totals.append(total)
        return record

    def run(self) -> dict[str, Any]:
        """Discover the nodes, run every round, write ``settings.output``; return the report."""
        self.connect()
        log.info("%d clients on %d SuperNodes", len(self.node_of), len(set(self.node_of.values())))
        for _ in range(self.sim.next_round, self.config.rounds):
            try:
                record = self.run_round()
            except PrivacyBudgetExhausted as exc:
                self.stopped = f"privacy budget exhausted: {exc}"
                log.warning("stopped: %s", self.stopped)
                break
            log.info("round %s: %s clients, %s dropped%s", record["round"], record["clients"],
                     record["dropped"], " (aborted)" if record["aborted"] else "")
        privacy = self.sim.privacy
        report = {"config": self.config.to_dict(), "transport": self.settings.transport.value,
                  "rounds": self.rounds, "nodes": len(set(self.node_of.values())), "stopped": self.stopped,
                  "privacy": ({**privacy.summary(), "server_epsilon": privacy.server_epsilon(),
                               "secure_aggregation": True}
                              if privacy is not None else None)}
        if self.settings.output:
            write_result(self.settings.output, report, self.sim.global_vec, self.totals)
        return report


def write_result(path: str | Path, report: Mapping[str, Any], global_vec: np.ndarray,
                 totals: Sequence[np.ndarray] | Iterable[np.ndarray]) -> Path:
    """Atomically write ``report`` (as JSON), the final global vector and each round's sum to an ``.npz``."""
    from securefedrec.report import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {
        "report": np.frombuffer(json.dumps(report, default=str).encode(), np.uint8),
        "global_vec": np.asarray(global_vec, np.float64),
    }
    for r, t in enumerate(totals):
        arrays[f"total_{r}"] = np.asarray(t, np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return atomic_write_bytes(path, buf.getvalue())

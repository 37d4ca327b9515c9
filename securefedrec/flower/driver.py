"""The server side: drive a SecAgg / SecAgg+ round stage by stage over Flower messages.

:class:`GridLink` turns Flower's ``Grid`` into "send one message to each of
these nodes, give me the replies that came back in time"; :func:`secagg_round`
drives a :class:`~protocols.secagg.SecAggServer` through it; :class:`FederatedRun`
is the federated loop (the in-process :class:`~securefedrec.simulation.Simulation`'s
sampling, broadcast, round config and server optimizer, with the clients on
SuperNodes).

Dropouts: a node that does not answer a stage within the timeout, answers
with an error, or answers garbage, is dropped for the rest of the round; its
clients simply miss from that stage's messages, which is the protocol's own
dropout path (the survivors' exact sum, or a clean abort below threshold).
A node's reply is accepted only for the clients it was asked about.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocols import AggregationAborted
from protocols.secagg import SecAggAggregator, SecAggServer, ServerResult
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError, SecureFedRecError
from securefedrec.flower.messages import FlowerStage, StageMessage, pack, unpack
from securefedrec.flower.node import hosted_clients
from securefedrec.flower.settings import DeploymentSettings

__all__ = ["FederatedRun", "GridLink", "NodeLink", "RoundOutcome", "discover", "secagg_round", "write_result"]

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

    result: ServerResult
    bytes_up: dict[int, int] = field(default_factory=dict)
    """Protocol bytes each client sent (the payloads, without Flower's framing)."""
    bytes_down: dict[int, int] = field(default_factory=dict)
    seconds_server: float = 0.0
    answered: dict[str, int] = field(default_factory=dict)
    """Stage name -> number of clients whose message arrived."""


def secagg_round(
    link: NodeLink,
    server: SecAggServer,
    node_of: Mapping[int, int],
    view: np.ndarray,
    *,
    malicious: bool,
    train_timeout: float,
    stage_timeout: float,
) -> RoundOutcome:
    """Drive ``server`` through a round: TRAIN (+advertise), share keys, masked input, [consistency], unmask.

    Args:
        link: the transport.
        server: a fresh server for the round's sampled clients.
        node_of: client id -> the node hosting it.
        view: the global vector the clients train from.
        malicious: whether the consistency stage runs.
        train_timeout, stage_timeout: seconds to wait for the first / the other stages.

    Raises:
        AggregationAborted: fewer than ``threshold`` clients survived a stage.
    """
    round_id = server.config.round_id
    sampled = server.client_ids
    outcome_up = dict.fromkeys(sampled, 0)
    outcome_down = dict.fromkeys(sampled, 0)
    answered: dict[str, int] = {}
    seconds = 0.0

    def exchange(stage: FlowerStage, msgs: Mapping[int, bytes], timeout: float) -> dict[int, bytes]:
        by_node: dict[int, dict[int, bytes]] = {}
        for cid, m in msgs.items():
            by_node.setdefault(node_of[cid], {})[cid] = m
            outcome_down[cid] += len(m)
        outbox = {
            nid: StageMessage(stage, round_id, payload, sampled,
                              view if stage is FlowerStage.TRAIN else None)
            for nid, payload in by_node.items()
        }
        replies = link.exchange(outbox, timeout)
        out: dict[int, bytes] = {}
        for nid, reply in replies.items():
            asked = by_node.get(nid, {})
            for cid, m in reply.payload.items():
                if cid not in asked:
                    log.warning("round %s, %s: node %s answered for client %s it was not asked about; "
                                "ignored", round_id, stage.name, nid, cid)
                    continue
                out[cid] = m
                outcome_up[cid] += len(m)
        answered[stage.name] = len(out)
        lost = sorted(set(msgs) - set(out))
        if lost:
            log.warning("round %s, %s: no answer from clients %s (dropped)", round_id, stage.name, lost[:20])
        return out

    def on_server(step: Any, *args: Any) -> Any:
        nonlocal seconds
        t0 = time.perf_counter()
        try:
            return step(*args)
        finally:
            seconds += time.perf_counter() - t0

    msgs = on_server(server.setup)
    msgs = exchange(FlowerStage.TRAIN, msgs, train_timeout)
    msgs = on_server(server.receive_advertisements, msgs)
    msgs = exchange(FlowerStage.SHARE_KEYS, msgs, stage_timeout)
    msgs = on_server(server.receive_shares, msgs)
    msgs = exchange(FlowerStage.MASKED_INPUT, msgs, stage_timeout)
    msgs = on_server(server.receive_masked_inputs, msgs)
    if malicious:
        msgs = exchange(FlowerStage.CONSISTENCY, msgs, stage_timeout)
        msgs = on_server(server.receive_signatures, msgs)
    msgs = exchange(FlowerStage.UNMASK, msgs, stage_timeout)
    result = on_server(server.receive_unmask, msgs)
    return RoundOutcome(result, outcome_up, outcome_down, seconds, answered)


def discover(link: NodeLink, num_clients: int, settings: DeploymentSettings) -> dict[int, int]:
    """Wait for ``min_nodes`` nodes, ask each its partition, return client id -> node id.

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
    return node_of


class FederatedRun:
    """The federated loop of a deployment: sample, broadcast, secure round, server optimizer.

    The server builds the same :class:`~securefedrec.simulation.Simulation` as an
    in-process run, but uses only its public parts (item count and layout,
    initial global vector, Poisson sampling, round configuration, broadcast
    codec, server optimizer); the clients train on the SuperNodes.

    Args:
        config, settings: the run.
        link: the transport to the SuperNodes.
    """

    def __init__(self, config: ExperimentConfig, settings: DeploymentSettings, link: NodeLink) -> None:
        from securefedrec.simulation import Simulation

        if config.dp != "none":
            raise ConfigError(f"dp: {config.dp!r} is not supported on the Flower deployment engine yet "
                              "(each client would have to add its noise share on its node); use dp 'none'")
        if config.compression not in ("none", "q8", "q16"):
            raise ConfigError(f"compression: {config.compression!r} is not supported on the Flower "
                              "deployment engine yet (its error feedback lives on the clients); "
                              "use none, q8 or q16")
        if config.dropout > 0:
            log.warning("dropout %.2f is a simulation setting; on the deployment engine only real "
                        "dropouts happen", config.dropout)
        self.config = config
        self.settings = settings
        self.link = link
        self.sim = Simulation(config)
        aggregator = self.sim.aggregator
        if not isinstance(aggregator, SecAggAggregator):
            raise ConfigError(f"protocol: {config.protocol!r} cannot run over the securefedrec Flower "
                              "transport; use secagg or secagg+")
        self.aggregator: SecAggAggregator = aggregator
        self.node_of: dict[int, int] = {}
        self.rounds: list[dict[str, Any]] = []
        self.totals: list[np.ndarray] = []

    def run_round(self) -> dict[str, Any]:
        """Run the next round; return its record."""
        from securefedrec.compression import STREAM_DOWNLINK

        sim, cfg = self.sim, self.config
        r = sim.next_round
        t0 = time.perf_counter()
        sampled = sim.sample(r)
        record: dict[str, Any] = {"round": r + 1, "clients": len(sampled), "dropped": 0, "aborted": False,
                                  "bytes_up": 0, "bytes_down": 0, "rmse": None, "mae": None, "epsilon": None}
        total = np.zeros_like(sim.global_vec)
        if sampled:
            view, bytes_down = sim.downlink.broadcast(
                sim.global_vec, sampled, np.random.default_rng([cfg.seed, r, STREAM_DOWNLINK]))
            rc = sim.round_config(r, len(sampled))
            server = SecAggServer(rc, sampled, sim.layout.length,
                                  neighbors=self.aggregator.degree_for(len(sampled), rc),
                                  malicious=self.settings.malicious)
            try:
                outcome = secagg_round(
                    self.link, server, self.node_of, view, malicious=self.settings.malicious,
                    train_timeout=self.settings.train_timeout, stage_timeout=self.settings.stage_timeout)
            except AggregationAborted as exc:
                record.update(aborted=True, dropped=len(sampled) - exc.survivors, error=str(exc))
                log.warning("round %s aborted: %s", r + 1, exc)
            except SecureFedRecError as exc:  # an integrity failure aborts the round, never the run
                record.update(aborted=True, dropped=len(sampled), error=f"{type(exc).__name__}: {exc}")
                log.warning("round %s aborted: %s", r + 1, exc)
            else:
                total = outcome.result.decode()
                mean = total / (cfg.sample_rate * sim.pool.num_clients)
                sim.global_vec = sim.optimizer.step(sim.global_vec, mean)
                record.update(
                    dropped=len(sampled) - len(outcome.result.survivors),
                    survivors=sorted(outcome.result.survivors),
                    bytes_up=sum(outcome.bytes_up.values()),
                    bytes_down=bytes_down + sum(outcome.bytes_down.values()),
                    seconds_server=outcome.seconds_server,
                    answered=outcome.answered,
                    quantization_step=float(outcome.result.encoding.step),
                )
        record["seconds"] = time.perf_counter() - t0
        sim.next_round = r + 1
        self.rounds.append(record)
        self.totals.append(total)
        return record

    def run(self) -> dict[str, Any]:
        """Discover the nodes, run every round, write ``settings.output``; return the report."""
        self.node_of = discover(self.link, self.sim.pool.num_clients, self.settings)
        log.info("%d clients on %d SuperNodes", len(self.node_of), len(set(self.node_of.values())))
        for _ in range(self.sim.next_round, self.config.rounds):
            record = self.run_round()
            log.info("round %s: %s clients, %s dropped%s", record["round"], record["clients"],
                     record["dropped"], " (aborted)" if record["aborted"] else "")
        report = {"config": self.config.to_dict(), "transport": self.settings.transport.value,
                  "rounds": self.rounds, "nodes": len(set(self.node_of.values()))}
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

"""The server's links to the SuperNodes: push one stage's messages, pull the replies; find the nodes.

:class:`NodeLink` is what the round drivers (:mod:`securefedrec.flower.rounds`) need from a
transport; :class:`GridLink` implements it over Flower's ``Grid`` (tests use a fake grid).
:func:`discover` asks every connected node which partition it hosts and, for the
malicious-server model, its clients' public identity keys. The message framing itself is
:mod:`securefedrec.flower.messages`.

Dropouts: a node that does not answer within the timeout, answers with an error, or answers
garbage, is simply missing from the replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from securefedrec.errors import ConfigError, DecodeError
from securefedrec.flower.messages import FlowerStage, StageMessage, pack, unpack
from securefedrec.flower.settings import DeploymentSettings, hosted_clients

__all__ = ["GridLink", "NodeLink", "discover"]

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
    if not counts:
        raise ConfigError(f"node config: no node reported its partition ({len(nodes)} connected, "
                          f"{len(replies)} answered; a ClientApp's error is in its SuperNode's log)")
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


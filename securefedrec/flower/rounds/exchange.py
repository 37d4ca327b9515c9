"""One round's message exchanges on the server: per-client payloads grouped by node, bytes counted.

Both round drivers (:mod:`~securefedrec.flower.rounds.secagg`,
:mod:`~securefedrec.flower.rounds.paillier`) send each stage through :class:`Exchanges`
and return a :class:`RoundOutcome`. A node's reply is accepted only for the clients it
was asked about; a client whose reply did not come is dropped for the rest of the round
(its clients simply miss from that stage's messages, which is the protocol's own dropout
path: the survivors' exact sum, or a clean abort below threshold).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.secagg import ServerResult
from securefedrec.flower.messages import FlowerStage, StageMessage
from securefedrec.flower.transport import NodeLink

__all__ = ["Exchanges", "Info", "RoundOutcome"]

log = logging.getLogger("securefedrec.flower")


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


class Exchanges:
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


"""Run the clients of an in-process round: one after another, or spread over forked worker processes.

:class:`RoundDriver` is the in-process driver that SecAgg(+) and submodel SecAgg share: it
passes the real encoded messages between the server and the clients stage by stage,
applies the dropout plan, counts every byte and times every call per role.

Clients are independent machines in a real deployment; a simulation may run
them on several cores. Each process owns a fixed subset of the client objects
for the whole round (they are state machines). The calling process runs its own
share of every stage while each forked worker receives the server's messages for
its clients over a pipe and sends back their replies. Workers are forked, so
inputs are inherited, never pickled, and every client's secrets are drawn in the
process that holds the client; workers ignore SIGINT (the parent closes them).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.base import Stage
from protocols.secagg.client import SecAggClient, raw_public
from protocols.secagg.server import SecAggServer

ClientFactory = Callable[[int], SecAggClient]


def fork_available() -> bool:
    """Whether worker processes can be forked on this platform."""
    return "fork" in mp.get_all_start_methods()


class LocalClients:
    """All client objects in this process, called one after another."""

    def __init__(self, factory: ClientFactory, ids: Sequence[int]) -> None:
        t0 = time.perf_counter()
        self.clients = {c: factory(c) for c in ids}
        self.setup_seconds = time.perf_counter() - t0

    def call(self, method: str, inbox: Mapping[int, bytes]) -> tuple[dict[int, bytes], float]:
        """Deliver ``inbox`` to ``method`` of each addressed client; replies and client seconds."""
        replies, seconds = {}, 0.0
        for c in sorted(inbox):
            t0 = time.perf_counter()
            replies[c] = getattr(self.clients[c], method)(inbox[c])
            seconds += time.perf_counter() - t0
        return replies, seconds

    def close(self) -> None:
        """Nothing to release."""


def _serve(conn: Connection, factory: ClientFactory, ids: Sequence[int]) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and closes the workers,
    # which must not die with a traceback of their own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # what the parent left in memory is never garbage here: keep the collector off those objects,
    # so it neither spends time on them nor copies their pages (copy-on-write)
    gc.freeze()
    local = LocalClients(factory, ids)
    pending = local.setup_seconds
    while True:
        command = conn.recv()
        if command is None:
            break
        method, inbox = command
        try:
            replies, seconds = local.call(method, inbox)
        except Exception as exc:  # handed to the parent, which re-raises it
            conn.send(("error", exc, 0.0))
            continue
        conn.send(("ok", replies, seconds + pending))
        pending = 0.0
    conn.close()


class ForkedClients:
    """Client objects spread over ``workers`` processes: this one and ``workers - 1`` forked ones.

    ``ids[i]`` lives in process ``i % workers``; process 0 is this one, which runs its
    share of every stage while the forked workers run theirs.
    """

    def __init__(self, factory: ClientFactory, ids: Sequence[int], workers: int) -> None:
        if workers < 2:
            raise ValueError(f"ForkedClients needs workers >= 2, got {workers}")
        ctx = mp.get_context("fork")
        self.home = {c: i % workers for i, c in enumerate(ids)}
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self._busy = False  # a call is in flight (interrupted calls leave it set)
        try:
            for w in range(1, workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, factory, list(ids[w::workers])), daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
            self.local = LocalClients(factory, ids[0::workers])  # after the forks: never copied to them
        except BaseException:
            self._busy = True  # stop what was started, at once
            self.close()
            raise
        self.setup_seconds = self.local.setup_seconds

    def call(self, method: str, inbox: Mapping[int, bytes]) -> tuple[dict[int, bytes], float]:
        """Deliver ``inbox`` to the local share and the workers; replies and the summed client seconds."""
        parts: list[dict[int, bytes]] = [{} for _ in range(len(self.conns) + 1)]
        for c, msg in inbox.items():
            parts[self.home[c]][c] = msg
        self._busy = True
        for conn, part in zip(self.conns, parts[1:], strict=True):
            conn.send((method, part))
        replies: dict[int, bytes] = {}
        seconds, error = 0.0, None
        try:  # this process's share, while the workers run theirs
            replies, seconds = self.local.call(method, parts[0])
        except Exception as exc:  # raised once the workers have answered (the pipes stay in step)
            error = exc
        for conn in self.conns:
            status, payload, secs = conn.recv()
            if status == "error":
                error = error or payload
            else:
                replies.update(payload)
                seconds += secs
        self._busy = False
        if error is not None:
            raise error
        return dict(sorted(replies.items())), seconds

    def close(self) -> None:
        """Stop the workers.

        Idle workers are told to exit and not waited for: they wind down while the
        server finishes the round (multiprocessing reaps them at the next start, or at
        exit). Workers of an interrupted call are terminated and joined at once.
        """
        if self._busy:
            for proc in self.procs:
                proc.terminate()
        for conn in self.conns:
            try:
                conn.send(None)
                conn.close()
            except OSError:
                pass
        if self._busy:
            for proc in self.procs:
                proc.join(timeout=5)


def make_runner(factory: ClientFactory, ids: Sequence[int], workers: int) -> LocalClients | ForkedClients:
    """The clients on ``workers`` processes when more than one is asked for and fork exists."""
    if workers > 1 and len(ids) > 1 and fork_available():
        return ForkedClients(factory, ids, workers)
    return LocalClients(factory, ids)


def identities(
    ids: Sequence[int], randbytes: Callable[[int], bytes], malicious: bool
) -> tuple[dict[int, Ed25519PrivateKey], dict[int, bytes], float]:
    """The long-term Ed25519 keys and the PKI (malicious model; empty otherwise), and the seconds spent.

    A deployment sets these up once per client outside any round: the seconds are offline.
    """
    t0 = time.perf_counter()
    identity: dict[int, Ed25519PrivateKey] = {}
    pki: dict[int, bytes] = {}
    if malicious:
        for c in ids:
            identity[c] = Ed25519PrivateKey.from_private_bytes(randbytes(32))
            pki[c] = raw_public(identity[c])
    return identity, pki, time.perf_counter() - t0


class RoundDriver:
    """Drives one in-process round: the server's stages, the clients' replies, bytes and seconds.

    Args:
        runner: the clients (:func:`make_runner`).
        ids: every client of the round.
        plan: client -> the stage at which it drops (it sends nothing from that stage on).
    """

    def __init__(self, runner: LocalClients | ForkedClients, ids: Sequence[int],
                 plan: Mapping[int, Stage]) -> None:
        self.runner = runner
        self.plan = dict(plan)
        self.bytes_up = dict.fromkeys(ids, 0)
        """client -> bytes it sent (its encoded messages)."""
        self.bytes_down = dict.fromkeys(ids, 0)
        """client -> bytes the server sent it."""
        self.seconds = {"clients": runner.setup_seconds, "server": 0.0}
        """Seconds per role, summed over the calls (the clients' over every process)."""

    def on_server(self, step: Callable[[], dict[int, bytes]]) -> dict[int, bytes]:
        """Run a server stage; time it and count what it sends."""
        t0 = time.perf_counter()
        out = step()
        self.seconds["server"] += time.perf_counter() - t0
        for c, m in out.items():
            self.bytes_down[c] += len(m)
        return out

    def on_clients(self, stage: Stage, inbox: Mapping[int, bytes], method: str) -> dict[int, bytes]:
        """Deliver ``inbox`` to ``method`` of each client that has not dropped by ``stage``; count replies."""
        live = {c: m for c, m in inbox.items() if not (c in self.plan and self.plan[c] <= stage)}
        replies, secs = self.runner.call(method, live)
        self.seconds["clients"] += secs
        for c, reply in replies.items():
            self.bytes_up[c] += len(reply)
        return replies

    def secagg_stages(
        self, server: SecAggServer, setups: dict[int, bytes], malicious: bool
    ) -> dict[int, bytes]:
        """SecAgg's stages from the setups to the clients' unmask replies (the caller closes the runner)."""
        msgs = self.on_clients(Stage.ADVERTISE, setups, "advertise")
        msgs = self.on_server(lambda: server.receive_advertisements(msgs))
        msgs = self.on_clients(Stage.SHARE_KEYS, msgs, "share_keys")
        msgs = self.on_server(lambda: server.receive_shares(msgs))
        msgs = self.on_clients(Stage.MASKED_INPUT, msgs, "masked_input")
        msgs = self.on_server(lambda: server.receive_masked_inputs(msgs))
        if malicious:
            msgs = self.on_clients(Stage.CONSISTENCY, msgs, "consistency")
            msgs = self.on_server(lambda: server.receive_signatures(msgs))
        else:  # no consistency message exists; dropping "at" it means not answering the unmask
            msgs = {c: m for c, m in msgs.items() if self.plan.get(c) != Stage.CONSISTENCY}
        return self.on_clients(Stage.UNMASK, msgs, "unmask")

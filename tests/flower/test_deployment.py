"""Flower deployment engine on loopback: SuperLink + SuperNodes as real processes, ``flwr run``.

Deselected by default; run with ``pytest -m deployment tests/flower/test_deployment.py``.
Size: ``SFR_DEPLOYMENT_NODES`` (default 3) SuperNodes, ``SFR_DEPLOYMENT_ROUNDS`` (default 2)
rounds, e.g. the 10-node, 3-round target::

    SFR_DEPLOYMENT_NODES=10 SFR_DEPLOYMENT_ROUNDS=3 pytest -m deployment tests/flower -k equals

``SFR_DEPLOYMENT_FLOWER=1`` adds the run over Flower's own ``SecAggPlusWorkflow`` (a few minutes more).

Every process is started in its own process group and killed (TERM, then KILL)
by the fixture, also when the test fails; everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.deployment

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
NODES = int(os.environ.get("SFR_DEPLOYMENT_NODES", "3"))
ROUNDS = int(os.environ.get("SFR_DEPLOYMENT_ROUNDS", "2"))
RUN_TIMEOUT = float(os.environ.get("SFR_DEPLOYMENT_TIMEOUT", "600"))

# small model so that the test measures the transport, not training
EXPERIMENT = {
    "synthetic-users": 60, "synthetic-items": 40, "factors": 4, "sample-rate": 1.0, "seed": 7,
    "protocol": "secagg+", "device": "cpu",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


class Federation:
    """A SuperLink and ``n`` SuperNodes on loopback, each in its own process group."""

    def __init__(self, root: Path, n: int, node_config: str = "") -> None:
        """``node_config``: extra node config for every SuperNode; each also gets its clients' identity keys
        and the PKI (the malicious-server model is the deployment default)."""
        self.root = root
        self.n = n
        self.node_config = node_config
        self.home = root / "flwr-home"
        self.home.mkdir()
        self.port = _free_port()
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n'
            f'[superlink.test]\naddress = "{HOST}:{self.port}"\ninsecure = true\n'
        )
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
                    "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self._spawn("superlink", ["flower-superlink", "--insecure", "--host", HOST, "--port", str(self.port),
                                  "--disable-runtime-dependency-installation"])
        _wait_port(self.port, 60)
        from tests.flower.conftest import identity_node_config

        for i in range(self.n):
            identity = identity_node_config(self.root / "keys", i, self.n)
            keys = " ".join(f"{k}='{v}'" for k, v in identity.items())
            config = f"partition-id={i} num-partitions={self.n} {keys} {self.node_config}".strip()
            self._spawn(f"node{i}", [
                "flower-supernode", "--insecure", "--superlink", f"{HOST}:{self.port}",
                "--host", HOST, "--port", str(_free_port()), "--node-config", config,
            ])

    def run(self, config: dict[str, Any], *, on_line: Any = None) -> dict[str, Any]:
        """``flwr run`` the app from this repository; return the server's report and arrays."""
        out = self.root / f"result-{len(self.procs)}.npz"
        config = {**config, "output": str(out)}
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
        proc = self._spawn(f"run{len(self.procs)}", ["flwr", "run", str(REPO), "test", "--stream",
                                                    "--run-config", overrides])
        deadline = time.monotonic() + RUN_TIMEOUT
        while proc.poll() is None:
            if on_line is not None:
                on_line(self)
            if time.monotonic() > deadline:
                raise TimeoutError(f"flwr run did not finish in {RUN_TIMEOUT} s; logs in {self.root}")
            time.sleep(0.1)
        if not out.is_file():
            raise AssertionError(f"no result written (flwr run exit {proc.returncode}); "
                                 f"logs in {self.root}:\n{self.tail()}")
        with np.load(out) as z:
            arrays = {k: z[k] for k in z.files}
        return {"report": json.loads(arrays.pop("report").tobytes()), **arrays}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                self.kill(name, signal.SIGTERM)
            else:  # the group may still hold children (superexec, clientapp)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        parts = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(parts)


def _started(root: Path, n: int, node_config: str = "") -> Iterator[Federation]:
    if shutil.which("flower-superlink") is None or shutil.which("flwr") is None:
        pytest.skip("flwr CLI not installed (pip install -e '.[flower]')")
    fed = Federation(root, n, node_config)
    try:
        fed.start()
        yield fed
    finally:  # also when start() or the test fails: every process group is killed
        fed.close()


@pytest.fixture
def federation(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Federation]:
    yield from _started(tmp_path, getattr(request, "param", NODES))


@pytest.fixture
def honest_federation(tmp_path: Path) -> Iterator[Federation]:
    """SuperNodes that accept the honest-but-curious model (``honest-server``; Flower's own SecAgg+)."""
    yield from _started(tmp_path, NODES, "honest-server=true")


@pytest.fixture
def noise_federation(tmp_path: Path) -> Iterator[Federation]:
    """SuperNodes that draw their DP noise from the public seed (``reproducible-noise``), as the simulator."""
    yield from _started(tmp_path, NODES, "reproducible-noise=true")


def _simulation(n: int, rounds: int, **overrides: Any) -> Any:
    """The simulator of the same run, training each SuperNode's clients in their own batch as the nodes do."""
    from securefedrec.config import ExperimentConfig
    from securefedrec.server.simulation import Simulation
    from tests.flower.conftest import train_as_nodes

    cfg = ExperimentConfig.from_mapping({**EXPERIMENT, "silos": n, "rounds": rounds, **overrides})
    return train_as_nodes(Simulation(cfg), n)


def test_deployment_equals_simulator(federation: Federation) -> None:
    n = federation.n
    result = federation.run({**EXPERIMENT, "silos": n, "rounds": ROUNDS, "min-nodes": n,
                             "reproducible-rounding": True, "stage-timeout": 120.0})
    rounds = result["report"]["rounds"]
    assert [r["aborted"] for r in rounds] == [False] * ROUNDS, rounds
    sim = _simulation(n, ROUNDS)
    for r in range(ROUNDS):
        record = sim.run_round()
        assert not record["aborted"]
        assert rounds[r]["survivors"] == list(range(n))
    step = rounds[0]["quantization_step"]
    # same seeds -> same sampling, training and rounding streams: equal within one quantization step
    assert np.abs(result["global_vec"] - sim.global_vec).max() <= step


def _per_user_run_equals_simulator(fed: Federation, users: int, extra: dict[str, Any],
                                   check: Any) -> None:
    """``users`` clients (one per user, each SuperNode hosting its share) on ``fed`` and in the simulator
    of the same run: no round aborted, everyone survived, ``check(node_record, sim_record)`` each
    round, and the global vectors equal within one quantization step."""
    n = fed.n
    extra = {**extra, "synthetic-users": users}
    result = fed.run({**EXPERIMENT, **extra, "silos": "none", "rounds": ROUNDS, "min-nodes": n,
                      "reproducible-rounding": True, "stage-timeout": 120.0})
    rounds = result["report"]["rounds"]
    assert [r["aborted"] for r in rounds] == [False] * ROUNDS, rounds
    sim = _simulation(n, ROUNDS, **{**extra, "silos": None})
    for r in range(ROUNDS):
        record = sim.run_round()
        assert not record["aborted"] and rounds[r]["survivors"] == list(range(users))
        check(rounds[r], record)
    step = rounds[0]["quantization_step"]
    assert np.abs(result["global_vec"] - sim.global_vec).max() <= step


def test_deployment_dp_user_randk_equals_simulator(noise_federation: Federation) -> None:
    """User-level DP (noise shares added on the nodes) and random-k (error feedback on the nodes)."""

    def check(node: dict[str, Any], sim: dict[str, Any]) -> None:
        assert node["epsilon"] == sim["epsilon"] and node["noise_std"] == sim["noise_std"]

    # dp 'user': every user is a client; each SuperNode hosts 8
    extra = {"dp": "user", "noise-multiplier": 1.0, "compression": "randk:0.25"}
    _per_user_run_equals_simulator(noise_federation, 8 * noise_federation.n, extra, check)


def test_deployment_submodel_equals_simulator(federation: Federation) -> None:
    """Submodel rounds (each client sends only its randomized-response rows) over real SuperNodes."""

    def check(node: dict[str, Any], sim: dict[str, Any]) -> None:
        assert node["rows_union"] == sim["rows_union"] and node["item_epsilon"] == 40.0

    # every user is a client, each SuperNode hosts 4; item epsilon 40: the RR keeps the true rows
    extra = {"submodel": True, "item-epsilon": 40.0}
    _per_user_run_equals_simulator(federation, 4 * federation.n, extra, check)


@pytest.mark.parametrize("federation", [4], indirect=True)
def test_deployment_survives_a_node_killed_during_key_sharing(federation: Federation) -> None:
    """Four SuperNodes, one killed: the malicious model's t' is 3 of 4 (it counts one holder the
    server may control), so three nodes of three could not lose one."""
    from protocols import RoundConfig, Stage
    from protocols.secagg import SecAggPlusAggregator

    n = federation.n
    if n < 4:
        pytest.skip("needs at least 4 SuperNodes")
    victim = n - 1  # hosts client n - 1
    killed: list[float] = []

    def kill_after_advertising(fed: Federation) -> None:
        text = fed.logs[f"node{victim}"].read_text(errors="replace")
        sent = text.find("Sending: train.sfr_advertise")
        if not killed and sent >= 0 and "Sent successfully" in text[sent:]:
            fed.kill(f"node{victim}")  # SIGKILL the SuperNode and its ClientApp: gone during key sharing
            killed.append(time.monotonic())

    result = federation.run({**EXPERIMENT, "silos": n, "rounds": 1, "min-nodes": n,
                             "reproducible-rounding": True, "stage-timeout": 45.0},
                            on_line=kill_after_advertising)
    assert killed, "the victim never advertised"
    record = result["report"]["rounds"][0]
    assert not record["aborted"], record
    assert record["survivors"] == list(range(n - 1))
    assert record["answered"]["TRAIN"] == n and record["answered"]["SHARE_KEYS"] == n - 1

    # the survivors' exact sum: same as the in-process protocol with the same dropout
    sim = _simulation(n, 1)
    sampled = sim.sample(0)
    view = sim.global_vec
    import torch

    cfg = sim.config
    deltas = sim.pool.train(sampled, torch.from_numpy(view), cfg.model.local_epochs, cfg.model.local_lr)
    deltas = deltas.clamp_(-cfg.model.update_clip, cfg.model.update_clip).to(torch.float64).numpy()
    inputs = {c: deltas[j] for j, c in enumerate(sampled)}
    rc: RoundConfig = sim.round_config(0, len(sampled))
    agg = SecAggPlusAggregator(malicious=True, rng=np.random.default_rng([cfg.run.seed, 0, 2]))
    expected = agg.aggregate(inputs, rc, {victim: Stage.SHARE_KEYS})
    assert expected.survivors == frozenset(range(n - 1))
    np.testing.assert_array_equal(result["total_0"], expected.total)
    plain = np.sum([inputs[c] for c in range(n - 1)], axis=0)
    assert np.abs(result["total_0"] - plain).max() <= (n - 1) * record["quantization_step"]


@pytest.mark.skipif(os.environ.get("SFR_DEPLOYMENT_FLOWER") != "1",
                    reason="Flower SecAgg+ on real SuperNodes: set SFR_DEPLOYMENT_FLOWER=1 (adds minutes)")
def test_deployment_flower_secaggplus_transport(honest_federation: Federation) -> None:
    n = honest_federation.n
    result = honest_federation.run({**EXPERIMENT, "silos": n, "rounds": ROUNDS, "min-nodes": n,
                                    "malicious": False, "transport": "flower-secaggplus",
                                    "stage-timeout": 120.0})
    assert [r["aborted"] for r in result["report"]["rounds"]] == [False] * ROUNDS
    sim = _simulation(n, ROUNDS)
    for _ in range(ROUNDS):
        sim.run_round()
    # Flower quantizes to 2^22 levels over [-update_clip, update_clip] with its own (unseeded) rounding:
    # each client's update is off by < 1 step, so the sum by < n steps; FedAdam carries that over rounds
    step = 2 * sim.config.model.update_clip / 2**22
    assert np.abs(result["global_vec"] - sim.global_vec).max() <= n * step

"""securefedrec.flower in process: message packing, the node runtime, the server driver on a fake grid."""

from __future__ import annotations

import dataclasses
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from protocols import RoundConfig, Stage
from protocols.secagg import SecAggPlusAggregator, SecAggServer
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError, IntegrityError, SecureFedRecError, StageError
from securefedrec.flower import (
    DeploymentSettings,
    FederatedRun,
    FlowerStage,
    GridLink,
    KeyStream,
    NodeRuntime,
    NodeSettings,
    StageMessage,
    discover,
    experiment_config,
    hosted_clients,
    pack,
    partition_of,
    rounding_rng,
    secagg_round,
    unpack,
)
from securefedrec.flower.client_app import handle
from securefedrec.server.simulation import Simulation
from tests.flower.conftest import identity_node_config, test_identity, train_as_nodes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
SMALL = {"synthetic_users": 40, "synthetic_items": 30, "factors": 4, "sample_rate": 1.0, "seed": 5,
         "device": "cpu"}


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    # Message() outside a running SuperLink/ServerApp needs a task identity
    TaskIdentity.run_id = 0
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0


# ---- message packing ---------------------------------------------------------------------
def test_pack_unpack_round_trip() -> None:
    vec = np.linspace(-1, 1, 17)
    msg = StageMessage(FlowerStage.TRAIN, 3, {4: b"\x00abc", 9: b""}, (4, 9, 12), vec, {"k": 1})
    back = unpack(pack(msg), expect=FlowerStage.TRAIN)
    assert back.stage is FlowerStage.TRAIN and back.round_id == 3
    assert back.payload == {4: b"\x00abc", 9: b""}
    assert back.sampled == (4, 9, 12) and back.info == {"k": 1}
    assert back.global_vec is not None
    np.testing.assert_array_equal(back.global_vec, vec)
    assert unpack(pack(StageMessage(FlowerStage.UNMASK, 0))).global_vec is None


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rd: rd.config_records.pop("sfr.meta"), "not a securefedrec message"),
        (lambda rd: rd.config_records["sfr.meta"].__setitem__("version", 99), "format version 99"),
        (lambda rd: rd.config_records["sfr.meta"].__setitem__("stage", "NOPE"), "unknown stage"),
        (lambda rd: rd.config_records["sfr.meta"].__setitem__("round", "1"), "'round' must be an int"),
        (lambda rd: rd.config_records["sfr.meta"].__setitem__("round", -1), "negative"),
        (lambda rd: rd.config_records["sfr.payload"].__setitem__("x1", b""), "not a client id"),
        (lambda rd: rd.config_records["sfr.payload"].__setitem__("7", "text"), "not bytes"),
    ],
)
def test_unpack_refuses_malformed(mutate: Any, match: str) -> None:
    content = pack(StageMessage(FlowerStage.SHARE_KEYS, 1, {1: b"x"}))
    mutate(content)
    with pytest.raises(DecodeError, match=match):
        unpack(content)


def test_unpack_refuses_another_stage() -> None:
    with pytest.raises(DecodeError, match="SHARE_KEYS message where UNMASK was expected"):
        unpack(pack(StageMessage(FlowerStage.SHARE_KEYS, 1)), expect=FlowerStage.UNMASK)


# ---- settings -----------------------------------------------------------------------------
def test_pyproject_app_config_is_valid() -> None:
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert table["components"] == {"serverapp": "securefedrec.flower.server_app:app",
                                   "clientapp": "securefedrec.flower.client_app:app"}
    config, settings = experiment_config(table["config"])
    assert config.federation.protocol == "secagg+" and settings.transport.value == "securefedrec"
    # "default" keeps ExperimentConfig's default
    assert config.model.factors == ExperimentConfig().model.factors


def test_run_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        experiment_config({"bogus": 1})
    with pytest.raises(ConfigError, match="transport"):
        experiment_config({"transport": "carrier-pigeon"})
    with pytest.raises(ConfigError, match="stage-timeout"):
        experiment_config({"stage-timeout": 0})
    config, _ = experiment_config({"neighbors": "none", "silos": 4, "sample-rate": 1})
    assert config.federation.neighbors is None and config.privacy.silos == 4
    # the popularity structures need the simulator's count round; the others run over Flower
    for spec in ("mixed:4", "prune:0.5+int8"):
        with pytest.raises(ConfigError, match=f"model-compression: '{re.escape(spec)}' needs the items' "):
            experiment_config({"model-compression": spec})
    config, _ = experiment_config({"model-compression": "hash:4+int8"})
    assert config.model.compression == "hash:4+int8"


def test_partition_and_hosting() -> None:
    assert partition_of({"partition-id": 2, "num-partitions": 5}) == (2, 5)
    with pytest.raises(ConfigError, match="partition-id"):
        partition_of({"num-partitions": 5})
    with pytest.raises(ConfigError, match="0 <= partition-id"):
        partition_of({"partition-id": 5, "num-partitions": 5})
    assert hosted_clients(1, 3, 8) == [1, 4, 7]


def test_keystream_and_rounding_streams() -> None:
    a, b = KeyStream(bytes(32)), KeyStream(bytes(32))
    assert a(5) + a(7) == b(12)
    assert KeyStream(bytes(range(32)))(16) != KeyStream(bytes(32))(16)
    spawned = np.random.default_rng([3, 1, 2]).spawn(4)
    for rank in range(4):
        ours = rounding_rng(3, 1, rank).integers(0, 2**62, 5)
        assert ours.tolist() == spawned[rank].integers(0, 2**62, 5).tolist()


# ---- fakes ---------------------------------------------------------------------------------
class FakeLink:
    """Nodes in process; ``silent[node] = stage``: from that stage on the node never answers.

    A node that raises answers nothing (on a SuperNode: an error reply, which :class:`GridLink` drops);
    the errors are kept in ``errors``.
    """

    def __init__(self, runtimes: Mapping[int, NodeRuntime], silent: Mapping[int, FlowerStage] | None = None):
        self.runtimes = dict(runtimes)
        self.silent = dict(silent or {})
        self.order = list(FlowerStage)
        self.calls: list[FlowerStage] = []
        self.errors: list[str] = []

    def node_ids(self) -> list[int]:
        return sorted(self.runtimes)

    def exchange(self, outbox: Mapping[int, StageMessage], timeout: float) -> dict[int, StageMessage]:
        out = {}
        for nid, msg in outbox.items():
            self.calls.append(msg.stage)
            stop = self.silent.get(nid)
            if stop is not None and self.order.index(msg.stage) >= self.order.index(stop):
                continue
            request = unpack(pack(msg))  # through the real records
            try:
                out[nid] = unpack(pack(self.runtimes[nid].handle(request)))
            except SecureFedRecError as exc:
                self.errors.append(f"node {nid}: {exc}")
        return out


class FakeGrid:
    """Flower ``Grid`` stand-in: delivers each message to the ClientApp handler with the node's context."""

    def __init__(self, n: int, run_config: dict[str, Any], dead: Iterable[int] = ()) -> None:
        """Nodes with identity keys (malicious model, the default); with ``malicious=false`` in the run
        config, nodes that opted in to the honest-but-curious model (``honest-server``) instead."""
        self._keys = tempfile.TemporaryDirectory()
        honest = run_config.get("malicious") is False
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, node_config={
                "partition-id": i, "num-partitions": n,
                **({"honest-server": True} if honest else identity_node_config(Path(self._keys.name), i, n))},
                state=RecordDict(), run_config=run_config)
            for i in range(n)
        }
        self.dead = set(dead)
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            ids.append(msg.metadata.message_id)
            nid = msg.metadata.dst_node_id
            if nid not in self.dead:
                self.replies[msg.metadata.message_id] = handle(msg, self.contexts[nid])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]


def node_options(settings: DeploymentSettings, i: int, n: int,
                 node: NodeSettings | None = None) -> dict[str, Any]:
    """NodeRuntime keywords for node ``i`` of ``n``: identity keys in the malicious model (the default),
    else ``honest-server`` (the node's explicit opt-in to the honest-but-curious model)."""
    node = node or NodeSettings()
    if settings.malicious:
        return {"identity": test_identity(i, n), "node": node}
    return {"node": dataclasses.replace(node, honest_server=True)}


def _runtimes(config: ExperimentConfig, n: int, settings: DeploymentSettings) -> dict[int, NodeRuntime]:
    return {100 + i: NodeRuntime(config, settings, (i, n), RecordDict(), **node_options(settings, i, n))
            for i in range(n)}


# ---- the driver ----------------------------------------------------------------------------
@pytest.mark.parametrize("malicious", [True, False])  # the default, and the explicit opt-out
def test_fake_grid_run_equals_the_simulator(tmp_path: Path, malicious: bool) -> None:
    n = 4
    run_config = {"synthetic-users": 40, "synthetic-items": 30, "factors": 4, "sample-rate": 1.0, "seed": 5,
                  "device": "cpu", "silos": n, "rounds": 2, "min-nodes": n, "reproducible-rounding": True,
                  "output": str(tmp_path / "out.npz"), "malicious": malicious}
    config, settings = experiment_config(run_config)
    run = FederatedRun(config, settings, GridLink(FakeGrid(n, run_config), poll=0.0))
    report = run.run()
    assert [r["survivors"] for r in report["rounds"]] == [list(range(n))] * 2
    sim = train_as_nodes(Simulation(config), n)  # the nodes' training, then everything replayed: bit-exact
    sim.run(progress=False)
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_array_equal(z["global_vec"], sim.global_vec)
        assert {"total_0", "total_1", "report"} <= set(z.files)


def test_fake_grid_dead_node_is_dropped() -> None:
    n = 4
    run_config = {"synthetic-users": 40, "synthetic-items": 30, "factors": 4, "sample-rate": 1.0, "seed": 5,
                  "device": "cpu", "silos": n, "rounds": 1, "min-nodes": n, "stage-timeout": 0.01,
                  "train-timeout": 0.01}
    config, settings = experiment_config(run_config)
    grid = FakeGrid(n, run_config)
    run = FederatedRun(config, settings, GridLink(grid, poll=0.0))
    run.node_of = discover(run.link, n, settings)
    grid.dead.add(103)  # gone before training
    record = run.run_round()
    assert not record["aborted"] and record["survivors"] == [0, 1, 2]


@pytest.mark.parametrize("stage", [FlowerStage.SHARE_KEYS, FlowerStage.MASKED_INPUT, FlowerStage.UNMASK])
def test_dropout_at_every_stage_gives_the_survivors_sum(stage: FlowerStage) -> None:
    n = 5
    config = ExperimentConfig(**SMALL, silos=n, rounds=1, neighbors=3)  # the nodes accept degree >= 3
    settings = DeploymentSettings(reproducible_rounding=True, malicious=False)
    link = FakeLink(_runtimes(config, n, settings), silent={104: stage})
    sim = Simulation(config)
    rc = sim.round_config(0, n)
    server = SecAggServer(rc, range(n), sim.layout.length, neighbors=3, malicious=False)
    outcome = secagg_round(link, server, {c: 100 + c for c in range(n)}, sim.global_vec, malicious=False,
                           train_timeout=1, stage_timeout=1)
    # the in-process protocol with the same dropout and rounding streams gives the same sum
    import torch

    deltas = train_as_nodes(sim, n).pool.train(list(range(n)), torch.from_numpy(sim.global_vec), 1,
                                                config.model.local_lr)
    deltas = deltas.clamp_(-config.model.update_clip, config.model.update_clip).to(torch.float64).numpy()
    plan = {4: {FlowerStage.SHARE_KEYS: Stage.SHARE_KEYS, FlowerStage.MASKED_INPUT: Stage.MASKED_INPUT,
                FlowerStage.UNMASK: Stage.UNMASK}[stage]}
    agg = SecAggPlusAggregator(neighbors=3, malicious=False, rng=np.random.default_rng([5, 0, 2]))
    expected = agg.aggregate({c: deltas[c] for c in range(n)}, rc, plan)
    survivors = frozenset(range(4)) if stage is not FlowerStage.UNMASK else frozenset(range(5))
    assert outcome.result.survivors == expected.survivors == survivors
    np.testing.assert_array_equal(outcome.result.decode(), expected.total)


def test_below_threshold_aborts_and_keeps_the_model() -> None:
    n = 4
    config = ExperimentConfig(**SMALL, silos=n, rounds=1, threshold_fraction=1.0)
    settings = DeploymentSettings(min_nodes=n)
    link = FakeLink(_runtimes(config, n, settings), silent={103: FlowerStage.MASKED_INPUT})
    run = FederatedRun(config, settings, link)
    run.node_of = discover(link, n, settings)
    before = run.sim.global_vec.copy()
    record = run.run_round()
    assert record["aborted"] and "threshold" in record["error"]
    np.testing.assert_array_equal(run.sim.global_vec, before)


def test_discover_refuses_duplicate_and_missing_partitions() -> None:
    config = ExperimentConfig(**SMALL, silos=3, rounds=1)
    settings = DeploymentSettings(min_nodes=2, node_wait=0.1)
    dup = {1: NodeRuntime(config, settings, (0, 3), RecordDict(), **node_options(settings, 0, 3)),
           2: NodeRuntime(config, settings, (0, 3), RecordDict(), **node_options(settings, 0, 3))}
    with pytest.raises(ConfigError, match="both have partition-id 0"):
        discover(FakeLink(dup), 3, settings)
    partial = {1: NodeRuntime(config, settings, (0, 3), RecordDict(), **node_options(settings, 0, 3)),
               2: NodeRuntime(config, settings, (1, 3), RecordDict(), **node_options(settings, 1, 3))}
    with pytest.raises(ConfigError, match="hosted by no SuperNode"):
        discover(FakeLink(partial), 3, settings)
    with pytest.raises(ConfigError, match="min-nodes"):
        discover(FakeLink({1: partial[1]}), 3, settings)
    silent = FakeLink(partial, silent={1: FlowerStage.HELLO, 2: FlowerStage.HELLO})  # every ClientApp fails
    with pytest.raises(ConfigError, match=r"no node reported its partition \(2 connected, 0 answered"):
        discover(silent, 3, settings)


def test_a_node_config_file_completes_what_the_runtime_gives(tmp_path: Path) -> None:
    """$SFR_NODE_CONFIG: Flower's simulation runtime gives a node only its partition; the file gives the
    rest, {partition-id} names each node's own identity file, and the runtime's own keys win."""
    from securefedrec.flower.settings import NODE_CONFIG_ENV, node_config, node_settings

    flower = {"partition-id": 2, "num-partitions": 3}
    assert node_config(flower, {}) == flower  # no file: Flower's config as it is
    path = tmp_path / "node.toml"
    path.write_text('identity-key = "keys/identity-{partition-id}.json"\npki = "keys/pki.json"\n'
                    'honest-server = true\ndevice = "cpu"\n')
    env = {NODE_CONFIG_ENV: str(path)}
    merged = node_config({**flower, "device": "cuda"}, env)
    assert merged == {**flower, "identity-key": "keys/identity-2.json", "pki": "keys/pki.json",
                      "honest-server": True, "device": "cuda"}
    assert node_settings(merged).honest_server and partition_of(merged) == (2, 3)
    with pytest.raises(ConfigError, match="has no partition-id"):
        node_config({}, env)
    path.write_text('partition-id = 0\n')  # the partition is the runtime's, never the file's
    with pytest.raises(ConfigError, match=r"node.toml: unknown key 'partition-id'"):
        node_config(flower, env)
    path.write_text('honest-server = \n')
    with pytest.raises(ConfigError, match=r"node.toml: .*line 1, column"):
        node_config(flower, env)
    with pytest.raises(ConfigError, match="cannot read"):
        node_config(flower, {NODE_CONFIG_ENV: str(tmp_path / "absent.toml")})


# ---- the node --------------------------------------------------------------------------------
def _first_stage(config: ExperimentConfig, n: int, round_id: int = 0, threshold: int = 2,
                 node: NodeRuntime | None = None) -> tuple[SecAggServer, NodeRuntime, StageMessage]:
    sim = Simulation(config)
    rc = RoundConfig(round_id=round_id, threshold=threshold, clip_range=config.model.update_clip)
    server = SecAggServer(rc, range(n), sim.layout.length, neighbors=None, malicious=False)
    setup = server.setup()
    settings = DeploymentSettings(malicious=False)
    if node is None:
        node = NodeRuntime(config, settings, (0, n), RecordDict(), **node_options(settings, 0, n))
    return server, node, StageMessage(FlowerStage.TRAIN, round_id, {0: setup[0]}, tuple(range(n)),
                                      sim.global_vec)


def test_node_answers_each_stage_once_and_in_order() -> None:
    config = ExperimentConfig(**SMALL, silos=3, rounds=2)
    _, node, train = _first_stage(config, 3)
    reply = node.handle(train)
    assert set(reply.payload) == {0}
    with pytest.raises(StageError, match="out of order"):
        node.handle(StageMessage(FlowerStage.MASKED_INPUT, 0, {0: b"x"}))
    _, again, train = _first_stage(config, 3)
    again.handle(train)
    with pytest.raises(StageError, match="never run twice"):  # no second instance of a round
        again.handle(train)
    _, early, train = _first_stage(config, 3)
    with pytest.raises(StageError, match="no state for that round"):
        early.handle(StageMessage(FlowerStage.SHARE_KEYS, 0, {0: b"x"}))


def test_a_refusal_lasts_for_the_rest_of_the_round() -> None:
    """h11 style: after any error in a round the node answers nothing more of it (its secrets are gone);
    the next round starts afresh."""
    config = ExperimentConfig(**SMALL, silos=3, rounds=3)
    # an out-of-order stage after training: the legitimate next stage is refused too, the secrets erased
    _, node, train = _first_stage(config, 3)
    node.handle(train)
    with pytest.raises(StageError, match="out of order"):
        node.handle(StageMessage(FlowerStage.UNMASK, 0, {0: b"x"}))
    assert "sfr.node" not in node.state.config_records and "sfr.deltas" not in node.state.array_records
    with pytest.raises(StageError, match=r"this node refused round 0 .*StageError.*out of order"):
        node.handle(StageMessage(FlowerStage.SHARE_KEYS, 0, {0: b"x"}))
    # a setup that lowers the threshold (ceil(0.5 * 3) = 2 is this node's minimum): IntegrityError, then the
    # round's honest setup is refused as well -- the server cannot retry with the same round
    _, lowered, weak = _first_stage(config, 3, round_id=1, threshold=1)
    with pytest.raises(IntegrityError, match="client 0, round 1, field 'threshold'"):
        lowered.handle(weak)
    _, _, honest = _first_stage(config, 3, round_id=1, node=lowered)
    with pytest.raises(StageError, match=r"this node refused round 1 .*IntegrityError"):
        lowered.handle(honest)
    with pytest.raises(StageError, match="refused round 1"):  # nor an earlier round
        lowered.handle(_first_stage(config, 3, round_id=0, node=lowered)[2])
    _, _, later = _first_stage(config, 3, round_id=2, node=lowered)
    assert set(lowered.handle(later).payload) == {0}


def test_node_refuses_clients_it_does_not_host() -> None:
    config = ExperimentConfig(**SMALL, silos=3, rounds=1)
    _, node, train = _first_stage(config, 3)
    with pytest.raises(IntegrityError, match="does not host"):
        node.handle(StageMessage(FlowerStage.TRAIN, 0, {1: b"x"}, (0, 1, 2), train.global_vec))


def test_node_secrets_stay_in_its_state_and_are_erased_after_the_round() -> None:
    n = 3
    config = ExperimentConfig(**SMALL, silos=n, rounds=1)
    settings = DeploymentSettings(malicious=False)
    link = FakeLink(_runtimes(config, n, settings))
    sim = Simulation(config)
    server = SecAggServer(sim.round_config(0, n), range(n), sim.layout.length, malicious=False)
    secagg_round(link, server, {c: 100 + c for c in range(n)}, sim.global_vec, malicious=False,
                 train_timeout=1, stage_timeout=1)
    for runtime in link.runtimes.values():
        assert "sfr.node" not in runtime.state.config_records
        assert "sfr.deltas" not in runtime.state.array_records


def test_client_app_handler_speaks_flower_messages() -> None:
    ctx = Context(run_id=1, node_id=7,
                  node_config={"partition-id": 1, "num-partitions": 3, "honest-server": True},
                  state=RecordDict(), run_config={"silos": 3, "malicious": False})
    msg = Message(content=pack(StageMessage(FlowerStage.HELLO, 0)), dst_node_id=7,
                  message_type=FlowerStage.HELLO.value, group_id="0")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    reply = unpack(handle(msg, ctx).content, expect=FlowerStage.HELLO)
    assert reply.info == {"partition-id": 1, "num-partitions": 3}
    bad = Message(content=RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=7,
                  message_type=FlowerStage.HELLO.value, group_id="0")
    with pytest.raises(DecodeError):
        handle(bad, ctx)


# ---- Flower's own SecAggPlusWorkflow, for comparison ------------------------------------------
class FlowerGrid(FakeGrid):
    """A fake grid for Flower's workflow: the whole ClientApp (with ``secaggplus_mod``), protobuf round trip.

    ``dead[node] = k``: the node stops answering from the k-th exchange on (0 = setup, 1 = share keys).
    A ClientApp exception becomes an error reply, as on a SuperNode.
    """

    def __init__(self, n: int, run_config: dict[str, Any], dead: Mapping[int, int] | None = None) -> None:
        super().__init__(n, run_config)
        self.dead_at = dict(dead or {})
        self.calls = 0
        from flwr.supercore.run import Run

        self.run = Run.create_empty(1)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        from flwr.app import Error
        from flwr.common.serde import message_from_proto, message_to_proto

        from securefedrec.flower.client_app import app

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            ids.append(msg.metadata.message_id)
            nid = msg.metadata.dst_node_id
            if self.dead_at.get(nid, 99) <= self.calls:
                continue
            copy = message_from_proto(message_to_proto(msg))
            copy.metadata.__dict__["_message_id"] = msg.metadata.message_id
            try:
                reply = app(copy, self.contexts[nid])
            except Exception as exc:
                reply = Message(Error(code=0, reason=repr(exc)), reply_to=copy)
            self.replies[msg.metadata.message_id] = message_from_proto(message_to_proto(reply))
        self.calls += 1
        return ids

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


def _flower_run(tmp_path: Path, n: int, rounds: int, dead: Mapping[int, int] | None = None) -> dict[str, Any]:
    from securefedrec.flower.server_app import app

    run_config = {"synthetic-users": 40, "synthetic-items": 30, "factors": 4, "sample-rate": 1.0, "seed": 5,
                  "device": "cpu", "silos": n, "rounds": rounds, "min-nodes": n, "stage-timeout": 5.0,
                  "transport": "flower-secaggplus", "malicious": False,
                  "output": str(tmp_path / "flower.npz")}
    app(FlowerGrid(n, run_config, dead), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                  run_config=run_config))
    with np.load(tmp_path / "flower.npz") as z:
        import json

        return {"report": json.loads(z["report"].tobytes()), "global_vec": z["global_vec"]}


def test_flower_secaggplus_transport_trains_the_same_model(tmp_path: Path) -> None:
    result = _flower_run(tmp_path, 4, 2)
    assert [r["aborted"] for r in result["report"]["rounds"]] == [False, False]
    sim = Simulation(ExperimentConfig(**SMALL, silos=4, rounds=2))
    sim.run(progress=False)
    # Flower quantizes to 2^22 levels over [-update_clip, update_clip] with its own rounding: each of the
    # 4 updates is off by < 1 step, so the sum by < 4 steps
    step = 2 * sim.config.model.update_clip / 2**22
    assert np.abs(result["global_vec"] - sim.global_vec).max() <= 4 * step


def test_flower_secaggplus_halts_on_a_drop_during_key_sharing_where_ours_completes(tmp_path: Path) -> None:
    flower = _flower_run(tmp_path, 4, 1, dead={103: 1})  # node 103 advertised, then vanished
    assert flower["report"]["rounds"][0]["aborted"]
    config = ExperimentConfig(**SMALL, silos=4, rounds=1)
    settings = DeploymentSettings(min_nodes=4)
    link = FakeLink(_runtimes(config, 4, settings), silent={103: FlowerStage.SHARE_KEYS})
    run = FederatedRun(config, settings, link)
    run.node_of = discover(link, 4, settings)
    record = run.run_round()
    assert not record["aborted"] and record["survivors"] == [0, 1, 2]


def test_malicious_model_signed_keys_and_consistency_round(tmp_path: Path) -> None:
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocols.secagg.client import raw_public
    from securefedrec.flower import load_identity

    n = 4
    keys = {c: Ed25519PrivateKey.generate() for c in range(n)}
    (tmp_path / "pki.json").write_text(json.dumps({c: raw_public(k).hex() for c, k in keys.items()}))
    runtimes = {}
    for c in range(n):
        from cryptography.hazmat.primitives import serialization

        raw = keys[c].private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        (tmp_path / f"id{c}.json").write_text(json.dumps({c: raw.hex()}))
        paths = {"identity-key": str(tmp_path / f"id{c}.json"), "pki": str(tmp_path / "pki.json")}
        identity = load_identity(paths)
        config = ExperimentConfig(**SMALL, silos=n, rounds=1)
        settings = DeploymentSettings(malicious=True, reproducible_rounding=True)
        runtimes[100 + c] = NodeRuntime(config, settings, (c, n), RecordDict(), identity=identity)
    link = FakeLink(runtimes, silent={103: FlowerStage.CONSISTENCY})
    config = ExperimentConfig(**SMALL, silos=n, rounds=1)
    run = FederatedRun(config, DeploymentSettings(malicious=True, min_nodes=n), link)
    run.node_of = discover(link, n, run.settings)
    record = run.run_round()
    assert not record["aborted"], record
    assert FlowerStage.CONSISTENCY in link.calls and record["survivors"] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="identity-key and pki"):
        NodeRuntime(config, DeploymentSettings(malicious=True), (0, n), RecordDict())


def test_every_experiment_field_is_in_the_flower_app_config() -> None:
    # the SuperLink refuses a --run-config override for a key the app's table does not list
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    table = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    fields = {name.replace("_", "-") for name in ExperimentConfig.field_names()}
    assert fields - set(table) == set()


@pytest.mark.parametrize(("override", "field"), [
    ({"dp": "user", "epsilon": 4.0}, "dp"),
    ({"compression": "q8"}, "compression"),
    ({"sample_rate": 0.5}, "sample-rate"),
])
def test_flower_secaggplus_transport_refuses_what_it_would_silently_drop(
        override: dict[str, Any], field: str) -> None:
    from securefedrec.flower.flower_secagg import check_flower_secaggplus

    base: dict[str, Any] = {"sample_rate": 1.0, "synthetic_users": 20}
    with pytest.raises(ConfigError, match=f"^{field}: "):
        check_flower_secaggplus(ExperimentConfig(**{**base, **override}))
    check_flower_secaggplus(ExperimentConfig(**base))


def test_flower_run_refuses_a_threat_model_that_contradicts_the_deployment() -> None:
    config = ExperimentConfig(protocol="secagg+", threat_model="malicious", synthetic_users=20)
    with pytest.raises(ConfigError, match=r"^threat-model: 'malicious' disagrees .* malicious=false"):
        FederatedRun(config, DeploymentSettings(malicious=False), GridLink(FakeGrid(2, {}), poll=0.0))


# ---- the deployment default: the malicious-server model ------------------------------------------
def test_the_deployment_defaults_to_the_malicious_model_and_says_how_to_configure_it() -> None:
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table["malicious"] is True and DeploymentSettings().malicious is True
    config = ExperimentConfig(**SMALL, silos=3, rounds=1)
    with pytest.raises(ConfigError, match="needs this node's identity-key and pki") as keys:
        NodeRuntime(config, DeploymentSettings(), (0, 3), RecordDict())
    assert "malicious=false" in str(keys.value) and "honest-server=true" in str(keys.value)
    # the opt-out is two explicit settings: the run's malicious=false and each node's honest-server=true
    with pytest.raises(ConfigError, match="honest-server=true in its node config"):
        NodeRuntime(config, DeploymentSettings(malicious=False), (0, 3), RecordDict())
    with pytest.raises(ConfigError, match="honest-server=true in its node config"):  # keys do not opt in
        NodeRuntime(config, DeploymentSettings(malicious=False), (0, 3), RecordDict(),
                    identity=test_identity(0, 3))
    NodeRuntime(config, DeploymentSettings(malicious=False), (0, 3), RecordDict(),
                node=NodeSettings(honest_server=True))
    with pytest.raises(ConfigError, match="honest-server must be true or false"):
        NodeSettings(honest_server="yes")  # type: ignore[arg-type]


def test_flower_secaggplus_transport_needs_the_explicit_opt_out(tmp_path: Path) -> None:
    from securefedrec.flower.flower_secagg import run_flower_secaggplus

    config = ExperimentConfig(**SMALL, silos=2, rounds=1)
    with pytest.raises(ConfigError, match=r"^transport: flower-secaggplus is Flower's honest-but-curious"):
        run_flower_secaggplus(None, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                            run_config={}), config, DeploymentSettings())


# ---- what a node bounds before any client exists ------------------------------------------------
def _setup_lie(field: str) -> Any:
    """A mutation of a SecAgg Setup that weakens (or misdirects) one parameter."""
    return {
        "threshold": lambda s: dataclasses.replace(s, threshold=1),
        "share_threshold": lambda s: dataclasses.replace(s, share_threshold=1),
        "degree": lambda s: dataclasses.replace(s, degree=2, share_threshold=2),
        "malicious": lambda s: dataclasses.replace(s, malicious=False),
        "ring_bits": lambda s: dataclasses.replace(s, ring_bits=16, value_bits=16),
        "client_ids": lambda s: dataclasses.replace(s, client_ids=s.client_ids[:5], degree=4,
                                                    share_threshold=5),
        "round_id": lambda s: dataclasses.replace(s, round_id=s.round_id + 1),
    }[field]


@pytest.mark.parametrize("field", ["threshold", "share_threshold", "degree", "malicious", "ring_bits",
                                   "client_ids", "round_id"])
def test_node_refuses_a_setup_weaker_than_its_own_configuration(field: str) -> None:
    """Each lie is refused with IntegrityError naming the field, before training; the round stays refused."""
    from protocols.secagg.messages import Setup

    n = 6
    config = ExperimentConfig(**SMALL, silos=n, rounds=1, threshold_fraction=0.75)
    settings = DeploymentSettings(malicious=True)
    sim = Simulation(config)
    rc = sim.round_config(0, n)
    server = SecAggServer(rc, range(n), sim.layout.length, neighbors=None, malicious=True)
    honest = Setup.decode(server.setup()[0])
    assert honest.degree == n - 1 and honest.threshold == 5  # the complete graph, t = ceil(0.75 * 6)
    trained: list[int] = []

    def trainer(cfg: ExperimentConfig, clients: list[int], view: np.ndarray, r: int,
                state: Any) -> np.ndarray:
        trained.extend(clients)
        return np.zeros((len(clients), view.shape[0]))

    node = NodeRuntime(config, settings, (0, n), RecordDict(), identity=test_identity(0, n), trainer=trainer)
    lie = _setup_lie(field)(honest).encode()
    with pytest.raises(IntegrityError, match=f"client 0, round 0, field '{field}'"):
        node.handle(StageMessage(FlowerStage.TRAIN, 0, {0: lie}, tuple(range(n)), sim.global_vec))
    assert trained == []
    with pytest.raises(StageError, match="this node refused round 0"):
        node.handle(StageMessage(FlowerStage.TRAIN, 0, {0: honest.encode()}, tuple(range(n)), sim.global_vec))
    # the honest setup, on a fresh node, is accepted
    fresh = NodeRuntime(config, settings, (0, n), RecordDict(), identity=test_identity(0, n), trainer=trainer)
    fresh.handle(StageMessage(FlowerStage.TRAIN, 0, {0: honest.encode()}, tuple(range(n)), sim.global_vec))
    assert trained == [0]


def test_node_keeps_its_users_local_part_across_rounds() -> None:
    """The model's local part stays on the node (its state) between rounds, as in the simulator's pool."""
    from securefedrec.flower.node.runtime import train_clients
    from securefedrec.flower.node.state import kept_local

    config = ExperimentConfig(**SMALL, protocol="plaintext", rounds=2)
    sim = Simulation(config)
    state = RecordDict()
    first, second = [0, 2, 4], [2, 6]
    train_clients(config, first, sim.global_vec, 0, state)
    users, local = kept_local(state)
    assert users.tolist() == first and set(local) == set(sim.model.local_shapes())
    before = {name: rows.copy() for name, rows in local.items()}
    train_clients(config, second, sim.global_vec + 0.01, 1, state)
    users, local = kept_local(state)
    assert users.tolist() == [0, 2, 4, 6]
    for name, rows in local.items():  # users 0 and 4 did not train again: their rows are as kept
        np.testing.assert_array_equal(rows[[0, 2]], before[name][[0, 2]])
        assert not np.array_equal(rows[1], before[name][1])  # user 2 trained from another global vector
    # the same clients trained in the simulator's pool from the same vectors: the same rows
    sim.pool.train(first, torch.from_numpy(sim.global_vec), 1, config.model.local_lr)
    sim.pool.train(second, torch.from_numpy(sim.global_vec + 0.01), 1, config.model.local_lr)
    for name, rows in local.items():
        np.testing.assert_allclose(rows, sim.pool.local[name][[0, 2, 4, 6]].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field", ["threshold", "share_threshold", "degree", "ring_bits"])
def test_the_node_and_the_protocol_client_apply_one_rule(field: str) -> None:
    """A weakened parameter: the node's policy names it; a SecAgg client holding that policy refuses it."""
    from protocols.secagg import PolicyRefusal, SecAggClient
    from protocols.secagg.messages import Setup
    from securefedrec.flower.node import node_policy

    n = 6
    config = ExperimentConfig(**SMALL, silos=n, rounds=1, threshold_fraction=0.75)
    rc = Simulation(config).round_config(0, n)
    honest = Setup.decode(SecAggServer(rc, range(n), 10, neighbors=None, malicious=True).setup()[0])
    policy = node_policy(config)
    assert policy.check(honest, True) >= 1
    lie = _setup_lie(field)(honest)
    with pytest.raises(PolicyRefusal) as refused:
        policy.check(lie, True)
    assert refused.value.field == field
    keys = test_identity(0, n)
    client = SecAggClient(0, np.zeros(10), malicious=True, round_id=0, identity_key=keys.keys[0],
                          identity_keys=keys.pki, policy=policy)
    with pytest.raises(IntegrityError, match=f"setup: {refused.value.why[:30]}"):
        client.advertise(lie.encode())


def test_the_node_policy_wants_the_degree_its_dropout_needs() -> None:
    """SecAgg+ without fixed neighbours: a degree secure against corruption, but too small for the
    dropout the node's run expects, is refused (an honest server would have chosen more)."""
    from protocols.secagg import PolicyRefusal
    from protocols.secagg.messages import Setup
    from securefedrec.flower.node import node_policy

    n = 60
    calm = ExperimentConfig(**{**SMALL, "synthetic_users": n}, protocol="secagg+")
    stormy = calm.replace(dropout=0.2)
    rc = Simulation(calm).round_config(0, n)
    setup = Setup.decode(SecAggServer(rc, range(n), 10, neighbors=34, malicious=True).setup()[0])
    assert setup.degree == 34
    assert node_policy(calm).check(setup, True) >= 1  # secure, and enough for 5 % dropout
    with pytest.raises(PolicyRefusal, match="dropout rate") as refused:
        node_policy(stormy).check(setup, True)
    assert refused.value.field == "degree"


def test_the_node_policy_counts_the_runs_corruption_rate_in_t_prime() -> None:
    """A node whose run assumes more corrupted clients refuses the t' of a server (and the simulator's
    own aggregator) sized for fewer; the run's setting reaches the server's t' the same way."""
    from protocols.secagg import PolicyRefusal, share_threshold
    from protocols.secagg.messages import Setup
    from securefedrec.flower.node import node_policy

    n = 20
    usual = ExperimentConfig(**{**SMALL, "synthetic_users": n}, protocol="secagg", threat_model="malicious")
    wary = usual.replace(corruption_rate=0.3)
    rc = Simulation(usual).round_config(0, n)
    setup = Setup.decode(SecAggServer(rc, range(n), 10, neighbors=None, malicious=True).setup()[0])
    assert node_policy(usual).check(setup, True) == setup.share_threshold
    with pytest.raises(PolicyRefusal, match="share threshold") as refused:
        node_policy(wary).check(setup, True)
    assert refused.value.field == "share_threshold"
    # the simulator's server takes the run's rate: its t' is the one the wary node computes
    sim = Simulation(wary)
    assert sim.aggregator.corruption_rate == 0.3
    wanted = share_threshold(rc.threshold, n, n - 1, True, 0.3)
    assert wanted > setup.share_threshold
    assert node_policy(wary).check(dataclasses.replace(setup, share_threshold=wanted), True) == wanted


def test_the_replayed_protocol_client_holds_the_node_policy_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the node's pre-training check bypassed, the SecAgg client the node
    replays still refuses a Setup that the default ClientPolicy accepts but this node's run
    configuration does not (threshold 4 of 6 < ceil(0.75 * 6); the default floor is 3)."""
    from protocols.secagg import ClientPolicy
    from protocols.secagg.messages import Setup
    from securefedrec.errors import ProtocolError
    from securefedrec.flower.node import runtime
    from securefedrec.flower.node.checks import RoundParams

    n = 6
    config = ExperimentConfig(**SMALL, silos=n, rounds=1, threshold_fraction=0.75)
    settings = DeploymentSettings(malicious=True)
    sim = Simulation(config)
    server = SecAggServer(sim.round_config(0, n), range(n), sim.layout.length, neighbors=None, malicious=True)
    honest = Setup.decode(server.setup()[0])
    weaker = dataclasses.replace(honest, threshold=4)
    assert ClientPolicy().check(weaker, True) >= 1  # the default floor would let it through

    def unchecked(cfg: ExperimentConfig, message: StageMessage, cid: int, *, malicious: bool) -> RoundParams:
        setup = Setup.decode(message.payload[cid])
        return RoundParams(setup.clip_range, setup.threshold, setup.length, setup.wrap)

    monkeypatch.setattr(runtime, "secagg_params", unchecked)
    node = NodeRuntime(config, settings, (0, n), RecordDict(), identity=test_identity(0, n),
                       trainer=lambda cfg, clients, view, r, state: np.zeros((len(clients), view.shape[0])))
    with pytest.raises(ProtocolError, match="threshold 4 is below this client's floor 5"):
        node.handle(StageMessage(FlowerStage.TRAIN, 0, {0: weaker.encode()}, tuple(range(n)), sim.global_vec))


def test_node_refuses_a_client_list_that_is_not_the_public_sample() -> None:
    """The server may not pick the clients: the node recomputes the round's Poisson sample from its run
    config and refuses a shrunk list (a victim and the server's own clients) or a padded one."""
    from protocols.secagg.messages import Setup
    from securefedrec.server.simulation import poisson_sample

    n = 12
    config = ExperimentConfig(**{**SMALL, "sample_rate": 0.5}, silos=n, rounds=1)
    drawn = poisson_sample(config.run.seed, 0, n, 0.5)
    assert 3 <= len(drawn) < n  # not everyone joins round 0
    victim = drawn[0]  # the node hosting it is partition victim of n
    settings = DeploymentSettings(malicious=False)
    sim = Simulation(config)
    assert sim.sample(0) == drawn  # the server's own sampling is this draw
    for lie in ([victim, drawn[1]], sorted({*drawn, *range(n)})):
        rc = sim.round_config(0, len(lie))
        setup = SecAggServer(rc, lie, sim.layout.length, neighbors=None, malicious=False).setup()
        node = NodeRuntime(config, settings, (victim, n), RecordDict(), **node_options(settings, victim, n))
        with pytest.raises(IntegrityError, match="round 0, field 'sampled'"):
            node.handle(StageMessage(FlowerStage.TRAIN, 0, {victim: setup[victim]}, tuple(lie),
                                     sim.global_vec))
    rc = sim.round_config(0, len(drawn))
    honest = SecAggServer(rc, drawn, sim.layout.length, neighbors=None, malicious=False).setup()
    assert Setup.decode(honest[victim]).client_ids == tuple(drawn)
    node = NodeRuntime(config, settings, (victim, n), RecordDict(), **node_options(settings, victim, n))
    reply = node.handle(StageMessage(FlowerStage.TRAIN, 0, {victim: honest[victim]}, tuple(drawn),
                                     sim.global_vec))
    assert set(reply.payload) == {victim}


def test_node_refuses_to_release_a_sum_of_fewer_than_two_inputs() -> None:
    """Two clients: the simulator's fraction alone (ceil(0.5 * 2) = 1) would let the server declare one
    dropped and release the other's input as "the sum"; the node's floor is 2."""
    from protocols.secagg.messages import Setup

    n = 2
    config = ExperimentConfig(**SMALL, silos=n, rounds=1)
    sim = Simulation(config)
    assert sim.round_config(0, n).threshold == 2
    settings = DeploymentSettings(malicious=False)
    lie = SecAggServer(RoundConfig(round_id=0, threshold=1, clip_range=config.model.update_clip), range(n),
                       sim.layout.length, neighbors=None, malicious=False).setup()
    assert Setup.decode(lie[0]).threshold == 1
    node = NodeRuntime(config, settings, (0, n), RecordDict(), **node_options(settings, 0, n))
    with pytest.raises(IntegrityError, match="field 'threshold': threshold 1 is below this client's floor 2"):
        node.handle(StageMessage(FlowerStage.TRAIN, 0, {0: lie[0]}, tuple(range(n)), sim.global_vec))

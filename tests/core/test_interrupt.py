"""Ctrl-C and damaged checkpoints: state as after the last completed round; one line, no traceback."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import securefedrec.report
import securefedrec.server.simulation as simulation
from protocols import AggregationResult, Aggregator, DropoutPlan, RoundConfig, get_aggregator
from securefedrec.cli import EXIT_INTERRUPTED, main
from securefedrec.config import ExperimentConfig
from securefedrec.errors import CheckpointError, RunInterrupted
from securefedrec.server.simulation import Simulation

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(synthetic_users=60, synthetic_items=40, synthetic_ratings_per_user=12, factors=4,
             sample_rate=0.5, device="cpu", protocol="plaintext")
# state in every part a round changes: error feedback (randk), the quantized downlink view,
# Adam's moments, and a user-level accountant with seeded noise
STATEFUL = dict(SMALL, compression="randk:0.5", server_optimizer="fedadam", dp="user", noise_multiplier=0.5,
                rounds=5)
FAST = ["--synthetic-users", "60", "--synthetic-items", "40", "--factors", "4", "--quiet", "--device", "cpu",
        "--protocol", "plaintext"]


class Interrupting:
    """An aggregator that presses Ctrl-C in its ``at``-th call (counting from 1)."""

    def __init__(self, inner: Aggregator, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0
        self.secure = inner.secure
        self.name = inner.name

    @property
    def rng(self) -> Any:  # the simulator seeds the protocol's rounding through this
        return self.inner.rng  # type: ignore[attr-defined]

    @rng.setter
    def rng(self, value: Any) -> None:
        self.inner.rng = value  # type: ignore[attr-defined]

    def aggregate(
            self, inputs: Any, config: RoundConfig, dropout: DropoutPlan | None = None) -> AggregationResult:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.aggregate(inputs, config, dropout)


def _state(sim: Simulation) -> dict[str, Any]:
    """Everything a round may change, as plain copies."""
    return {
        "global": sim.global_vec.copy(),
        "users": sim.pool.local["user_factors"].clone(), "bias": sim.pool.local["user_bias"].clone(),
        "optimizer": {k: np.copy(v) for k, v in sim.optimizer.state_dict().items()},
        "residuals": {c: r.copy() for c, r in sim.uplink.feedback.residuals.items()},
        "view": sim.downlink.view.copy(), "sync": sim.downlink.last_sync.copy(),
        "privacy": json.dumps(sim.privacy.state()) if sim.privacy is not None else None,
        "next": sim.next_round, "rounds": len(sim.rounds),
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=key)
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), key
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{key}.{k}")
        else:
            assert x == y, key


@pytest.mark.parametrize("where", ["aggregate", "evaluate", "checkpoint"])
def test_interrupted_round_leaves_no_trace_and_the_run_continues_identically(
        where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ExperimentConfig(**STATEFUL)
    full = Simulation(config)
    full.run(progress=False)

    ckpt = tmp_path / "c.npz"
    at = 3 if where == "aggregate" else 0
    sim = Simulation(config, aggregator=Interrupting(get_aggregator("plaintext"), at))  # type: ignore[arg-type]
    after_two: dict[str, Any] = {}

    def keep(record: dict[str, Any]) -> None:
        if record["round"] == 2:
            after_two.update(_state(sim))

    if where == "evaluate":  # the last step of round 3, after the optimizer and the accountant moved
        real = sim.evaluate

        def evaluate(ranking: bool = False) -> Any:
            if sim.next_round == 2:
                raise KeyboardInterrupt
            return real(ranking)

        monkeypatch.setattr(sim, "evaluate", evaluate)
    if where == "checkpoint":  # Ctrl-C while round 3's checkpoint is written: round 3 must not count
        real_fsync, calls = os.fsync, []

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 3:
                raise KeyboardInterrupt
            real_fsync(fd)

        monkeypatch.setattr(securefedrec.report.os, "fsync", fsync)
    with pytest.raises(RunInterrupted) as stop:
        sim.run(checkpoint=ckpt, progress=False, on_round=keep)
    monkeypatch.undo()
    report = stop.value.report
    assert report["stopped"] == "interrupted" and report["final"] is None
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    _assert_same(_state(sim), after_two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no half-written temporary left
    resumed = Simulation(config)
    resumed.load_checkpoint(ckpt)
    _assert_same(_state(resumed), after_two)

    sim.aggregator = get_aggregator("plaintext")
    sim.run(checkpoint=ckpt, progress=False)  # the same computation replayed: bit-exact
    np.testing.assert_array_equal(sim.global_vec, full.global_vec)
    assert [r["rmse"] for r in sim.rounds] == [r["rmse"] for r in full.rounds]
    assert sim.privacy is not None and full.privacy is not None
    assert sim.privacy.epsilon() == full.privacy.epsilon()


def test_ctrl_c_in_the_cli_writes_a_partial_report_and_says_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = simulation.get_aggregator
    monkeypatch.setattr(simulation, "get_aggregator", lambda name, **kw: Interrupting(real(name, **kw), 3))
    report, ckpt = tmp_path / "r.json", tmp_path / "c.npz"
    argv = ["run", *FAST, "--rounds", "5", "--checkpoint", str(ckpt), "--report", str(report)]
    assert main(argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "interrupted after round 2 of 5" in err and f"partial report in {report}" in err
    data = json.loads(report.read_text())
    assert data["stopped"] == "interrupted" and len(data["rounds"]) == 2
    resume = shlex.split(err.split("resume with: ")[1])
    assert resume[0] == "securefedrec" and resume[-1] == "--resume" and resume[1:-1] == argv

    monkeypatch.setattr(simulation, "get_aggregator", real)
    assert main(resume[1:]) == 0
    assert [r["round"] for r in json.loads(report.read_text())["rounds"]] == [1, 2, 3, 4, 5]

    # without --checkpoint nothing can be resumed, and the message says so
    monkeypatch.setattr(simulation, "get_aggregator", lambda name, **kw: Interrupting(real(name, **kw), 2))
    assert main(["run", *FAST, "--rounds", "5", "--report", str(report)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing was saved to resume from" in err


def test_ctrl_c_while_loading_gives_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(simulation, "load_configured_dataset", interrupted)
    assert main(["run", *FAST, "--report", str(tmp_path / "r.json")]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted before the first round" in err
    assert not (tmp_path / "r.json").exists()


# ---- damaged and foreign checkpoints ---------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after 2 of the rounds of ``SMALL`` (read only)."""
    ckpt = tmp_path_factory.mktemp("good") / "good.npz"
    Simulation(ExperimentConfig(rounds=2, **SMALL)).run(checkpoint=ckpt, progress=False)
    return ckpt


def _damage(kind: str, good: Path, bad: Path) -> str:
    """Write a damaged checkpoint of ``kind`` to ``bad``; return what the error must say."""
    data = good.read_bytes()
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
        return "damaged or truncated"
    if kind == "empty":
        bad.write_bytes(b"")
        return "empty (0 bytes)"
    if kind == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
        return "not an .npz archive"
    if kind == "pickle":  # what numpy would offer to load "unsafely"
        np.save(bad.with_suffix(".npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
        bad.with_suffix(".npy").rename(bad)
        return "not an .npz archive"
    if kind == "foreign zip":
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("readme.txt", "hello")
        return "not a readable securefedrec checkpoint"
    if kind == "foreign npz":
        np.savez(bad, weights=np.ones(3))
        return "no 'meta' record"
    if kind == "object entry":
        np.savez(bad, meta=np.array([{"version": 1}], dtype=object))
        return "not a plain array"
    if kind == "meta not json":
        np.savez(bad, meta=np.frombuffer(b"\xff\xfe{", np.uint8))
        return "'meta' is not JSON"
    if kind == "meta fields":
        with np.load(good) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays["meta"].tobytes())
        meta["rounds"] = "many"
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(bad, **arrays)
        return "'meta' field 'rounds'"
    if kind == "corrupt entry":  # flip bytes inside the compressed-free archive: a CRC error
        buf = bytearray(data)
        at = data.index(b"global_vec.npy") + 200
        buf[at:at + 16] = bytes(16)
        bad.write_bytes(bytes(buf))
        return "damaged or truncated"
    if kind == "another config":
        Simulation(ExperimentConfig(rounds=2, **{**SMALL, "factors": 6})).run(checkpoint=bad, progress=False)
        return "different configuration (factors: checkpoint 6 vs run 4)"
    raise AssertionError(kind)


KINDS = ["truncated", "empty", "garbage", "pickle", "foreign zip", "foreign npz", "object entry",
         "meta not json", "meta fields", "corrupt entry", "another config"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_checkpoint_is_one_clear_error_and_changes_nothing(
        kind: str, good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    says = _damage(kind, good, bad)
    sim = Simulation(ExperimentConfig(rounds=3, **SMALL))
    before = _state(sim)
    with pytest.raises(CheckpointError) as err:
        sim.load_checkpoint(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and says in message and "\n" not in message
    assert "allow_pickle" not in message
    _assert_same(_state(sim), before)
    sim.load_checkpoint(good)  # the simulation is still usable
    assert sim.next_round == 2


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "foreign zip", "another config"])
def test_the_cli_refuses_a_bad_checkpoint_in_one_line(
        kind: str, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    says = _damage(kind, good, bad)
    report = tmp_path / "r.json"
    argv = ["run", *FAST, "--synthetic-ratings-per-user", "12", "--sample-rate", "0.5", "--rounds", "3",
            "--checkpoint", str(bad), "--resume", "--report", str(report)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "allow_pickle" not in err
    assert err.startswith(f"securefedrec: error: {bad}: ") and says in err
    assert not report.exists()


def test_a_checkpoint_past_the_configured_rounds_is_refused(good: Path) -> None:
    with pytest.raises(CheckpointError, match="2 rounds done, more than the 1 rounds"):
        Simulation(ExperimentConfig(rounds=1, **SMALL)).load_checkpoint(good)


@pytest.mark.slow
def test_sigint_to_a_real_run_exits_130_with_a_resumable_checkpoint(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it (to the whole process group), a few seconds into the run."""
    report, ckpt = tmp_path / "r.json", tmp_path / "c.npz"
    argv = [sys.executable, "-m", "securefedrec.cli", "run", *FAST, "--rounds", "100000",
            "--checkpoint", str(ckpt), "--report", str(report)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # some rounds in
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "resume with: securefedrec run" in err
    assert err.strip().splitlines()[-1].startswith("securefedrec: interrupted after round")
    data = json.loads(report.read_text())
    assert data["stopped"] == "interrupted" and len(data["rounds"]) >= 1
    sim = Simulation(ExperimentConfig(rounds=100000, **{**SMALL, "sample_rate": 0.2,
                                                         "synthetic_ratings_per_user": 30}))
    sim.load_checkpoint(ckpt)
    assert sim.next_round == len(data["rounds"]) >= 1

"""``flwr run . local``: the same app on Flower's simulation runtime (Ray backend), on loopback.

Deselected by default with the other deployment tests; run with
``pytest -m deployment tests/flower/test_simulation_runtime.py``. Needs the ``simulation``
extra (``pip install -e '.[flower,simulation]'``: Flower's Ray backend).

Flower starts a local SuperLink in simulation mode, detached; the test gives it free ports
and its own ``FLWR_HOME`` and kills it (and its Ray workers) at the end, also on failure.
The simulated SuperNodes get their identity keys from ``$SFR_NODE_CONFIG``
(:func:`securefedrec.flower.settings.node_config`), so the run uses the malicious-server
model, the deployment default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.flower.test_deployment import EXPERIMENT, REPO, RUN_TIMEOUT, _free_port, _simulation, _toml

pytestmark = pytest.mark.deployment

NODES = 3
ROUNDS = 2


@pytest.fixture
def local_superlink(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a ``flwr`` whose ``local`` connection starts its own simulation SuperLink."""
    pytest.importorskip("ray", reason="Flower's simulation runtime needs the simulation extra")
    if shutil.which("flwr") is None or shutil.which("flower-superlink") is None:
        pytest.skip("flwr CLI not installed (pip install -e '.[flower,simulation]')")
    from tests.flower.conftest import identity_node_config

    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n'
                                      '[superlink.local]\naddress = ":local:"\n')
    for i in range(NODES):
        identity_node_config(tmp_path / "keys", i, NODES)
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(f'identity-key = "{tmp_path}/keys/identity-{{partition-id}}.json"\n'
                         f'pki = "{tmp_path}/keys/pki.json"\ndevice = "cpu"\n')
    control = str(_free_port())
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": control, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "SFR_NODE_CONFIG": str(node_toml), "PYTHONUNBUFFERED": "1"}
    try:
        yield env
    finally:  # the SuperLink is detached (its own session): find it by its control port
        found = subprocess.run(["pgrep", "-f", f"flower-superlink.*127.0.0.1:{control}"],
                               capture_output=True, text=True, check=False)
        for pid in (int(p) for p in found.stdout.split()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_simulation_runtime_equals_the_simulator(local_superlink: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "result.npz"
    config = {**EXPERIMENT, "silos": NODES, "rounds": ROUNDS, "min-nodes": NODES,
              "reproducible-rounding": True, "stage-timeout": 120.0, "output": str(out)}
    log = tmp_path / "flwr-run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["flwr", "run", str(REPO), "local", "--stream", "--federation-config", f"num-supernodes={NODES}",
             "--run-config", " ".join(f"{k}={_toml(v)}" for k, v in config.items())],
            stdout=sink, stderr=subprocess.STDOUT, env=local_superlink, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    if not out.is_file():
        raise AssertionError(f"no result (flwr run exit {proc.returncode}):\n{text[-4000:]}")
    with np.load(out) as z:
        arrays = {k: z[k] for k in z.files}
    rounds = json.loads(arrays["report"].tobytes())["rounds"]
    assert [r["aborted"] for r in rounds] == [False] * ROUNDS, rounds
    sim = _simulation(NODES, ROUNDS)
    for r in range(ROUNDS):
        assert not sim.run_round()["aborted"]
        assert rounds[r]["survivors"] == list(range(NODES))
    step = rounds[0]["quantization_step"]
    # the simulated SuperNodes run the same clients as real ones: the same model within one step
    assert np.abs(arrays["global_vec"] - sim.global_vec).max() <= step

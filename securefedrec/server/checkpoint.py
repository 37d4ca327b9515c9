"""Checkpoints of a simulation, and the snapshot that makes an interrupted round leave no trace.

A checkpoint is one ``.npz`` archive written atomically after each round: a JSON
``meta`` record (format version, configuration, round records, privacy state, the
server optimizer's scalars), the global vector, the model's local part (one array
per name of :meth:`~securefedrec.models.base.Model.local_shapes`), the server
optimizer's moments (``opt.*``) and the compression state (``comp.*``). Loading
never unpickles and checks everything before it changes anything
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from securefedrec.compression import load_state as load_compression_state
from securefedrec.compression import state_arrays as compression_arrays
from securefedrec.errors import CheckpointError
from securefedrec.report import atomic_write_bytes
from securefedrec.server.optimizers import ServerOptimizer

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.compression import Downlink, Uplink
    from securefedrec.config import ExperimentConfig
    from securefedrec.metrics import Evaluation
    from securefedrec.models.base import Model
    from securefedrec.models.pool import ClientPool
    from securefedrec.privacy import RoundPrivacy

__all__ = ["CHECKPOINT_VERSION", "Run", "Snapshot", "load", "save"]

CHECKPOINT_VERSION = 1


class Run(Protocol):
    """What a checkpoint saves and restores (a :class:`~securefedrec.server.simulation.Simulation`)."""

    config: ExperimentConfig
    model: Model
    pool: ClientPool
    global_vec: np.ndarray
    optimizer: ServerOptimizer
    uplink: Uplink
    downlink: Downlink
    privacy: RoundPrivacy | None
    next_round: int
    rounds: list[dict[str, Any]]
    last_eval: Evaluation | None
    stopped: str | None


def save(run: Run, path: str | Path) -> Path:
    """Atomically write everything needed to continue ``run`` to ``path`` (.npz)."""
    meta = {
        "version": CHECKPOINT_VERSION,
        "config": run.config.to_dict(),
        "next_round": run.next_round,
        "rounds": run.rounds,
        "privacy": run.privacy.state() if run.privacy is not None else None,
        "optimizer_scalars": {k: v for k, v in run.optimizer.state_dict().items()
                              if not isinstance(v, np.ndarray)},
    }
    arrays = {f"opt.{k}": v for k, v in run.optimizer.state_dict().items() if isinstance(v, np.ndarray)}
    arrays.update(
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        global_vec=run.global_vec,
    )
    arrays.update({name: value.numpy() for name, value in run.pool.local.items()})
    arrays.update({f"comp.{k}": v for k, v in compression_arrays(run.uplink, run.downlink).items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return atomic_write_bytes(path, buf.getvalue())


def load(run: Run, path: str | Path, optimizer: ServerOptimizer) -> None:
    """Continue ``run`` from ``path``; its configuration must equal the run's except for ``rounds``.

    Every check passes before anything changes: a file that is empty, truncated,
    not ours, or written by another configuration leaves ``run`` as it was.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    p = Path(path)
    arrays = _read_checkpoint(p)
    meta = _checkpoint_meta(p, arrays)
    # a key a checkpoint lacks was added after it was written, with a default that keeps the
    # behaviour of its time (dp_mechanism gaussian, model mf, feedback explicit, 99 evaluation
    # negatives, the implicit models' fields that MF does not read)
    ours, theirs = run.config.to_dict(), {**type(run.config).defaults(), **meta["config"]}
    diff = sorted(k for k in ours if k != "rounds" and ours[k] != theirs.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs run {ours[k]!r}" for k in diff)
        raise CheckpointError(f"{p}: checkpoint was written by a different configuration ({details})")
    done = meta["next_round"]
    if done > run.config.federation.rounds:
        raise CheckpointError(f"{p}: checkpoint has {done} rounds done, more than the "
                              f"{run.config.federation.rounds} rounds of this run "
                              "(raise --rounds to continue it)")
    expected = {"global_vec": run.global_vec, **{name: v.numpy() for name, v in run.pool.local.items()}}
    for name, like in expected.items():
        _check_array(p, arrays, name, like)
    optimizer.load_state_dict(_checked_optimizer_state(p, meta, arrays, optimizer, run.model.length))
    try:
        feedback, downlink, spread = load_compression_state(
            {k[5:]: v for k, v in arrays.items() if k.startswith("comp.")},
            run.uplink, run.downlink, run.model.length)
        if run.privacy is not None:  # last check: it validates its state and may refuse; nothing changed
            run.privacy.restore(done, meta["privacy"])
    except CheckpointError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: malformed compression or privacy state "
                              f"({type(exc).__name__}: {exc})") from None
    # every check passed: change the state (nothing below can fail)
    run.global_vec = arrays["global_vec"]
    run.uplink.feedback, run.downlink, run.uplink.spread = feedback, downlink, spread
    run.pool.local = {name: torch.from_numpy(arrays[name]) for name in run.pool.local}
    run.optimizer = optimizer
    run.next_round = done
    run.rounds = list(meta["rounds"])


_ZIP_MAGIC = b"PK\x03\x04"


def _read_checkpoint(p: Path) -> dict[str, np.ndarray]:
    """Every array of the checkpoint at ``p``; never unpickles, never a raw zipfile/numpy error."""
    try:
        with p.open("rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except IsADirectoryError:
        raise CheckpointError(f"{p}: is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if not head:
        raise CheckpointError(f"{p}: checkpoint is empty (0 bytes); delete it, or drop --resume to start "
                              "over")
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"{p}: not a readable securefedrec checkpoint (not an .npz archive)")
    arrays: dict[str, np.ndarray] = {}
    name = ""
    try:
        with np.load(p, allow_pickle=False) as z:
            for name in z.files:
                value = z[name]
                if not isinstance(value, np.ndarray) or value.dtype.hasobject:
                    raise CheckpointError(f"{p}: not a readable securefedrec checkpoint (entry {name!r} "
                                          "is not an array)")
                arrays[name] = value
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        # ValueError covers pickled entries; numpy's message would advise allow_pickle, which is unsafe
        where = f"entry {name!r}" if name else "the archive"
        if isinstance(exc, ValueError):
            raise CheckpointError(f"{p}: not a readable securefedrec checkpoint ({where} is not a plain "
                                  "array)") from None
        raise CheckpointError(f"{p}: checkpoint is damaged or truncated ({where} cannot be read)") from None
    return arrays


def _checkpoint_meta(p: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The checkpoint's JSON record, with the type of every field checked."""
    raw = arrays.get("meta")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{p}: not a readable securefedrec checkpoint (no 'meta' record)")
    try:
        meta = json.loads(raw.tobytes())
    except ValueError:  # also UnicodeDecodeError
        raise CheckpointError(f"{p}: not a readable securefedrec checkpoint ('meta' is not JSON)") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: not a readable securefedrec checkpoint ('meta' is not a JSON object)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {meta.get('version')!r}, expected "
                              f"{CHECKPOINT_VERSION}")
    fields: dict[str, type | tuple[type, ...]] = {
        "config": dict, "next_round": int, "rounds": list, "optimizer_scalars": dict,
        "privacy": (dict, type(None)),
    }
    for field, kind in fields.items():
        if field not in meta or not isinstance(meta[field], kind) or isinstance(meta[field], bool):
            raise CheckpointError(f"{p}: damaged checkpoint: 'meta' field {field!r} is missing or of the "
                                  f"wrong type ({type(meta.get(field)).__name__})")
    if meta["next_round"] < 0 or len(meta["rounds"]) != meta["next_round"] or not all(
            isinstance(r, dict) for r in meta["rounds"]):
        raise CheckpointError(f"{p}: damaged checkpoint: {len(meta['rounds'])} round records for "
                              f"{meta['next_round']} rounds done")
    return meta


def _check_array(p: Path, arrays: dict[str, np.ndarray], name: str, like: np.ndarray) -> None:
    value = arrays.get(name)
    if value is None:
        raise CheckpointError(f"{p}: damaged checkpoint: no {name!r} array")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise CheckpointError(f"{p}: {name} is {value.dtype}{list(value.shape)}, this run has "
                              f"{like.dtype}{list(like.shape)} (another data set or model size?)")


def _checked_optimizer_state(
    p: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], fresh: ServerOptimizer, length: int
) -> dict[str, Any]:
    """The server optimizer's state from the checkpoint, checked against ``fresh`` (same kind, no step).

    Its scalars must be exactly ``fresh``'s; its arrays (moments, created by the first
    step) must be attributes ``fresh`` declares, of the vector's length.
    """
    scalars = {k: v for k, v in fresh.state_dict().items() if not isinstance(v, np.ndarray)}
    moments = {k for k, v in vars(fresh).items() if v is None or isinstance(v, np.ndarray)}
    state: dict[str, Any] = dict(meta["optimizer_scalars"])
    if set(state) != set(scalars):
        raise CheckpointError(f"{p}: server optimizer state has {sorted(state)}, expected {sorted(scalars)} "
                              "(another --server-optimizer?)")
    for key, like in scalars.items():
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(like, int) and not isinstance(value, int)):
            raise CheckpointError(f"{p}: server optimizer state {key!r} is {value!r}, expected a "
                                  f"{type(like).__name__}")
        state[key] = type(like)(value)
    for name, value in arrays.items():
        if not name.startswith("opt."):
            continue
        key = name[4:]
        if key not in moments or value.shape != (length,) or value.dtype.kind not in "fiu":
            raise CheckpointError(f"{p}: server optimizer state {key!r} does not fit this run")
        state[key] = value.astype(np.float64)
    return state


@dataclass(frozen=True)
class Snapshot:
    """What a round may change, captured before it, so an interrupted round leaves no trace.

    Copies are shallow where the round replaces objects instead of writing into them:
    the global vector, the error-feedback residual arrays and the downlink view are
    always new arrays; the local part (user factors), the server optimizer (its moments appear at the
    first step) and the downlink's per-client sync numbers change in place, so they are
    copied.
    """

    global_vec: np.ndarray
    optimizer: ServerOptimizer
    local: dict[str, torch.Tensor]
    residuals: dict[int, np.ndarray]
    spread: tuple[float, int] | None
    last_coords: np.ndarray | None
    downlink: Downlink
    privacy: dict[str, Any] | None
    next_round: int
    rounds: int
    last_eval: Evaluation | None
    stopped: str | None

    @classmethod
    def capture(cls, sim: Run) -> Snapshot:
        """What ``sim`` holds now."""
        downlink = copy.copy(sim.downlink)
        downlink.last_sync, downlink.sizes = sim.downlink.last_sync.copy(), list(sim.downlink.sizes)
        return cls(
            global_vec=sim.global_vec,
            optimizer=copy.deepcopy(sim.optimizer),
            local={name: value.clone() for name, value in sim.pool.local.items()},
            residuals=dict(sim.uplink.feedback.residuals), spread=sim.uplink.spread,
            last_coords=sim.uplink.last_coords, downlink=downlink,
            privacy=sim.privacy.state() if sim.privacy is not None else None,
            next_round=sim.next_round, rounds=len(sim.rounds), last_eval=sim.last_eval, stopped=sim.stopped,
        )

    def restore(self, sim: Run) -> None:
        """Put ``sim`` back as it was at :meth:`capture`."""
        if sim.privacy is not None:
            sim.privacy.restore(self.next_round, self.privacy)
        sim.global_vec = self.global_vec
        sim.optimizer = self.optimizer
        sim.pool.local = self.local
        sim.uplink.feedback.residuals = self.residuals
        sim.uplink.spread, sim.uplink.last_coords = self.spread, self.last_coords
        sim.downlink = self.downlink
        sim.next_round, sim.last_eval, sim.stopped = self.next_round, self.last_eval, self.stopped
        del sim.rounds[self.rounds:]

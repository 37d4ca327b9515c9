"""The in-process federated simulator: sampling, local training, aggregation, fusion, evaluation.

One round (DESIGN.md "The data path of one round"):

1. Poisson sampling: each client joins with probability ``sample_rate``
   (independently, so DP accounting with rate q is exact).
2. The sampled clients receive the global vector and train locally
   (:class:`~securefedrec.client.ClientPool`); each delta is clipped to
   ``[-update_clip, update_clip]`` per coordinate, the range the protocols
   encode, so every protocol computes the same function.
   With ``compression`` (:mod:`securefedrec.compression`) the broadcast is a
   quantized delta, the deltas pass through random-k / top-k with per-client
   error feedback, and q8 / q16 narrow the protocol's ring.
3. The aggregator (``protocols``) returns the survivors' sum, or aborts; an
   aborted round leaves the model unchanged and training goes on.
4. The server optimizer applies ``sum / (q * N)``.
5. Every ``eval_every`` rounds, each client evaluates locally.

All randomness of round r comes from ``numpy.random.default_rng([seed, r, stream])``,
so a run resumed from a checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from protocols import (
    AggregationAborted,
    Aggregator,
    RoundConfig,
    Stage,
    aggregator_class,
    get_aggregator,
    sample_dropouts,
)
from securefedrec import streams
from securefedrec.client import ClientPool, resolve_device
from securefedrec.compression import Downlink, Uplink, parse_compression
from securefedrec.compression import load_state as load_compression_state
from securefedrec.compression import state_arrays as compression_arrays
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset, load_dataset, synthetic
from securefedrec.errors import CheckpointError, PrivacyBudgetExhausted, RunInterrupted
from securefedrec.fusion import ServerOptimizer, get_optimizer
from securefedrec.metrics import Evaluation, evaluate
from securefedrec.model import Hyper, Layout
from securefedrec.privacy import RoundPrivacy, build_privacy
from securefedrec.report import atomic_write_bytes, environment
from securefedrec.skellam import SkellamUserPrivacy

__all__ = ["Simulation", "run_experiment"]

_CHECKPOINT_VERSION = 1


def load_configured_dataset(config: ExperimentConfig) -> Dataset:
    """The data set an :class:`~securefedrec.config.ExperimentConfig` names."""
    if config.dataset == "synthetic":
        return synthetic(config.synthetic_users, config.synthetic_items, config.synthetic_ratings_per_user,
                         seed=config.seed)
    return load_dataset(config.dataset, config.data_dir, config.split, config.seed,
                        data_file=config.data_file, columns=config.columns, rating_scale=config.rating_scale)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def dropout_by_unmask(per_stage: float) -> float:
    """The share of clients gone by the unmask stage, each dropping with ``per_stage`` at every stage.

    That is the rate SecAgg+'s graph must tolerate (:func:`~protocols.sample_dropouts` draws
    the plan): at least the aggregator's default 0.05, below the 0.5 ``choose_degree`` accepts.
    """
    return min(0.49, max(0.05, 1.0 - (1.0 - per_stage) ** len(Stage)))


def _round_rng(seed: int, round_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_id, stream])


class Simulation:
    """A federated MF run that can be stepped, checkpointed and resumed.

    Args:
        config: the experiment.
        dataset: use this instead of loading ``config.dataset``.
        aggregator: use this instead of ``get_aggregator(config.protocol)``.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        dataset: Dataset | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dataset = dataset if dataset is not None else load_configured_dataset(config)
        self.layout = Layout(self.dataset.num_items, config.factors)
        self.hyper = Hyper(
            factors=config.factors, lam_user=config.lam_user, lam_item=config.lam_item,
            lam_bias=config.lam_bias, init_std=config.init_std,
        )
        groups = None
        if config.silos is not None:  # cross-silo: --silos S groups the users into S clients
            from securefedrec.dpsgd import silo_groups

            groups = silo_groups(self.dataset.num_users, config.silos, config.seed)
        self.pool = ClientPool(self.dataset.train, self.dataset.num_users, self.layout, self.hyper,
                               groups=groups, device=self.device)
        options: dict[str, Any] = ({} if config.threat_model == "default"
                                   else {"malicious": config.threat_model == "malicious"})
        protocol = aggregator_class(config.protocol)
        if protocol.parallel_clients:
            # clients are separate machines: simulate them on every core (paillier: encryption
            # randomness; secagg: key agreement, signatures, masks), ~2x per round on 2 cores
            options["workers"] = usable_cpus()
        if protocol.sparse_graph and config.dropout > 0:  # size the graph for the simulated dropout
            options["dropout_rate"] = dropout_by_unmask(config.dropout)
        self.aggregator = aggregator or get_aggregator(config.protocol, **options)
        self.optimizer = self._new_optimizer()
        lo, hi = self.dataset.scale
        # the intercept starts at the middle of the public rating scale (no data is peeked at)
        init = self.layout.init((lo + hi) / 2, config.init_std, torch.Generator().manual_seed(config.seed))
        self.global_vec: np.ndarray = init.numpy()
        # compression (securefedrec.compression): uplink with error feedback, compressed broadcast
        self.uplink = Uplink(parse_compression(config.compression), config.seed)
        self.downlink = Downlink(self.uplink.compressor, self.global_vec, self.pool.num_clients)
        self.next_round = 0
        self.rounds: list[dict[str, Any]] = []
        self.last_eval: Evaluation | None = None
        # differential privacy (securefedrec.privacy); sigma is calibrated here, before any training
        self.privacy: RoundPrivacy | None = build_privacy(config, self.pool, self.layout)
        # sparse client messages only where the protocol may reveal which coordinates are non-zero
        # and nothing downstream needs the dense vector (noise, compression, several epochs, silos)
        self.sparse_updates = bool(
            getattr(type(self.aggregator), "accepts_sparse", False) and self.privacy is None
            and config.compression == "none" and config.local_epochs == 1 and config.silos is None
        )
        self.stopped: str | None = None

    def _new_optimizer(self) -> ServerOptimizer:
        """The configured server optimizer, before any step."""
        cfg = self.config
        return get_optimizer(cfg.server_optimizer, cfg.server_lr).with_decay(
            cfg.server_decay, self.layout.length - 1)  # the item part; never the intercept

    # ------------------------------------------------------------------ one round
    def sample(self, round_id: int) -> list[int]:
        """Poisson sampling of the clients for ``round_id``."""
        n = self.pool.num_clients
        if self.config.sample_rate >= 1.0:
            return list(range(n))
        draws = _round_rng(self.config.seed, round_id, streams.SAMPLING).random(n)
        return np.flatnonzero(draws < self.config.sample_rate).tolist()

    def round_config(self, round_id: int, n: int) -> RoundConfig:
        """The protocol settings for a round with ``n`` sampled clients."""
        cfg = self.config
        threshold = max(1, math.ceil(cfg.threshold_fraction * n))
        config = self.uplink.round_config(RoundConfig(  # q8/q16 narrow the ring to 8/16 + ceil(log2 n)
            round_id=round_id,
            # with user-level DP the range must also hold each client's noise share (privacy.py Notes)
            clip_range=cfg.update_clip if self.privacy is None else self.privacy.encoding_range(
                threshold, cfg.update_clip),
            ring_bits=cfg.ring_bits,
            threshold=threshold,
            neighbors=cfg.neighbors,
        ), n)
        if isinstance(self.privacy, SkellamUserPrivacy):  # integer units at the mechanism's scale
            config = self.privacy.round_config(config, n)
        return config

    def run_round(self) -> dict[str, Any]:
        """Run the next round; return its record (also appended to ``self.rounds``)."""
        cfg = self.config
        r = self.next_round
        if self.privacy is not None:
            self.privacy.check_round(r)  # raises PrivacyBudgetExhausted before anything changes
        t0 = time.perf_counter()
        sampled = self.sample(r)
        record: dict[str, Any] = {
            "round": r + 1, "clients": len(sampled), "dropped": 0, "aborted": False,
            "bytes_up": 0, "bytes_down": 0, "rmse": None, "mae": None, "epsilon": None,
            "server_epsilon": None,
        }
        if sampled:
            round_cfg = self.round_config(r, len(sampled))
            # clients train on what the (compressed) broadcast gave them
            view, bytes_down = self.downlink.broadcast(
                self.global_vec, sampled, _round_rng(cfg.seed, r, streams.DOWNLINK))
            g = torch.from_numpy(view)
            inputs: dict[int, Any]
            if self.sparse_updates:  # the insecure baseline: clients send only their non-zeros
                sparse = self.pool.train_sparse(sampled, g, cfg.local_lr, cfg.update_clip)
                inputs = dict(zip(sampled, sparse, strict=True))
            else:
                dp_trained = self.privacy.train(sampled, g, r) if self.privacy is not None else None
                trained = (dp_trained if dp_trained is not None
                           else self.pool.train(sampled, g, cfg.local_epochs, cfg.local_lr))
                deltas = trained.clamp_(-cfg.update_clip, cfg.update_clip).to("cpu", torch.float64).numpy()
                if self.privacy is not None:  # each client clips and adds its noise share (skellam: int64)
                    deltas = self.privacy.privatize(
                        deltas, sampled, round_cfg.threshold, r)
                inputs = {cid: deltas[j] for j, cid in enumerate(sampled)}
            t_train = time.perf_counter()
            plan = (sample_dropouts(sampled, cfg.dropout, _round_rng(cfg.seed, r, streams.DROPOUT))
                    if cfg.dropout > 0 else {})
            if hasattr(self.aggregator, "rng"):
                self.aggregator.rng = _round_rng(cfg.seed, r, streams.ROUNDING)
            record.update(bytes_down=bytes_down, bytes_broadcast=bytes_down)  # from the encoded broadcast
            try:
                result = self.uplink.aggregate(  # compress (randk/topk + error feedback), then aggregate
                    self.aggregator, inputs, round_cfg, plan)
            except AggregationAborted as exc:
                record.update(aborted=True, dropped=len(sampled) - exc.survivors, error=str(exc))
            else:
                mean = result.total / (cfg.sample_rate * self.pool.num_clients)
                # random-k: only the public selection carries information (lazy step, fusion.py)
                self.global_vec = self.optimizer.step(self.global_vec, mean, coords=self.uplink.last_coords)
                record.update(
                    dropped=len(sampled) - len(result.survivors),
                    bytes_up=result.total_bytes_up,
                    bytes_down=record["bytes_down"] + result.total_bytes_down,
                    seconds_clients=result.seconds_clients,
                    seconds_server=result.seconds_server,
                )
            record["seconds_train"] = t_train - t0
            if self.privacy is not None and not record["aborted"]:
                record["noise_std"] = self.privacy.realized_std(
                    len(sampled) - record["dropped"], round_cfg.threshold)
        if self.privacy is not None:
            self.privacy.count_participants(sampled)
            record["epsilon"] = self.privacy.commit_round(r)
            record["server_epsilon"] = self.privacy.server_epsilon()
        if (r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds:
            ev = self.evaluate()
            record.update(rmse=ev.rmse, mae=ev.mae)
        record["seconds"] = time.perf_counter() - t0
        self.rounds.append(record)
        self.next_round = r + 1
        return record

    def evaluate(self, ranking: bool = False) -> Evaluation:
        """Every client evaluates the current global model locally."""
        ev = evaluate(
            torch.from_numpy(self.global_vec), self.layout, self.hyper, self.pool.data,
            self.dataset.test, self.dataset.scale, ranking=ranking, device=self.device,
        )
        self.last_eval = ev
        return ev

    # ------------------------------------------------------------------ whole run
    def run(
        self,
        *,
        checkpoint: str | Path | None = None,
        progress: bool = True,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run the remaining rounds (checkpointing after each) and return the report.

        Raises:
            RunInterrupted: on Ctrl-C (KeyboardInterrupt). The round in progress is
                abandoned: this simulation is as after the last completed round, whose
                checkpoint was written, and the exception carries the partial report
                (``stopped == "interrupted"``, ``final`` None). ``run`` may be called again.
        """
        t0 = time.perf_counter()
        try:
            with tqdm(range(self.next_round, self.config.rounds), desc=f"{self.config.protocol} rounds",
                      disable=not progress, unit="round", initial=self.next_round,
                      total=self.config.rounds) as bar:
                for _ in bar:
                    try:
                        record = self._complete_round(checkpoint)
                    except PrivacyBudgetExhausted as exc:
                        self.stopped = f"privacy budget exhausted: {exc}"
                        break
                    if record["rmse"] is not None:
                        bar.set_postfix(rmse=f"{record['rmse']:.4f}")
                    if on_round is not None:
                        on_round(record)
            final: dict[str, Any] | None = self.evaluate(ranking=True).as_dict()
        except KeyboardInterrupt:
            raise RunInterrupted(self._report(None, "interrupted", t0)) from None
        return self._report(final, self.stopped, t0)

    def _complete_round(self, checkpoint: str | Path | None) -> dict[str, Any]:
        """One round and its checkpoint, or neither: any exception restores the state before it."""
        before = _State.capture(self)
        try:
            record = self.run_round()
            if checkpoint is not None:
                self.save_checkpoint(checkpoint)
        except BaseException:  # Ctrl-C included: the round did not happen
            before.restore(self)
            raise
        return record

    def _report(self, final: dict[str, Any] | None, stopped: str | None, t0: float) -> dict[str, Any]:
        privacy = self.privacy
        return {
            "config": self.config.to_dict(),
            "dataset": self.dataset.summary(),
            "rounds": self.rounds,
            "final": None if final is None else {
                **final,
                "epsilon": privacy.epsilon() if privacy is not None else None,
                "server_epsilon": privacy.server_epsilon() if privacy is not None else None,
                "delta": privacy.delta if privacy is not None else None},
            "privacy": ({**privacy.summary(), "server_epsilon": privacy.server_epsilon(),
                         "secure_aggregation": getattr(self.aggregator, "secure", False)}
                        if privacy is not None else None),
            "stopped": stopped,
            "environment": environment(self.device),
            "seconds": time.perf_counter() - t0,
        }

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write everything needed to continue this run to ``path`` (.npz)."""
        meta = {
            "version": _CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "next_round": self.next_round,
            "rounds": self.rounds,
            "privacy": self.privacy.state() if self.privacy is not None else None,
            "optimizer_scalars": {k: v for k, v in self.optimizer.state_dict().items()
                                  if not isinstance(v, np.ndarray)},
        }
        arrays = {f"opt.{k}": v for k, v in self.optimizer.state_dict().items() if isinstance(v, np.ndarray)}
        arrays.update(
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
            global_vec=self.global_vec,
            user_factors=self.pool.user_factors.numpy(),
            user_bias=self.pool.user_bias.numpy(),
        )
        arrays.update({f"comp.{k}": v for k, v in compression_arrays(self.uplink, self.downlink).items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from ``path``; its configuration must equal ours except for ``rounds``.

        Every check passes before anything changes: a file that is empty, truncated,
        not ours, or written by another configuration leaves this simulation as it was.

        Raises:
            CheckpointError: one line naming the file and what is wrong with it.
        """
        p = Path(path)
        arrays = _read_checkpoint(p)
        meta = _checkpoint_meta(p, arrays)
        # checkpoints written before dp_mechanism existed were Gaussian
        ours, theirs = self.config.to_dict(), {"dp_mechanism": "gaussian", **meta["config"]}
        diff = sorted(k for k in ours if k != "rounds" and ours[k] != theirs.get(k))
        if diff:
            details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs run {ours[k]!r}" for k in diff)
            raise CheckpointError(f"{p}: checkpoint was written by a different configuration ({details})")
        done = meta["next_round"]
        if done > self.config.rounds:
            raise CheckpointError(f"{p}: checkpoint has {done} rounds done, more than the "
                                  f"{self.config.rounds} rounds of this run (raise --rounds to continue it)")
        expected = {"global_vec": self.global_vec, "user_factors": self.pool.user_factors.numpy(),
                    "user_bias": self.pool.user_bias.numpy()}
        for name, like in expected.items():
            _check_array(p, arrays, name, like)
        optimizer = self._new_optimizer()
        optimizer.load_state_dict(_checked_optimizer_state(p, meta, arrays, optimizer, self.layout.length))
        try:
            feedback, downlink, spread = load_compression_state(
                {k[5:]: v for k, v in arrays.items() if k.startswith("comp.")},
                self.uplink, self.downlink, self.layout.length)
            if self.privacy is not None:  # last check: it validates its state and may refuse; nothing changed
                self.privacy.restore(done, meta["privacy"])
        except CheckpointError as exc:
            raise CheckpointError(f"{p}: {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{p}: malformed compression or privacy state "
                                  f"({type(exc).__name__}: {exc})") from None
        # every check passed: change the state (nothing below can fail)
        self.global_vec = arrays["global_vec"]
        self.uplink.feedback, self.downlink, self.uplink.spread = feedback, downlink, spread
        self.pool.user_factors = torch.from_numpy(arrays["user_factors"])
        self.pool.user_bias = torch.from_numpy(arrays["user_bias"])
        self.optimizer = optimizer
        self.next_round = done
        self.rounds = list(meta["rounds"])


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
    if meta.get("version") != _CHECKPOINT_VERSION:
        raise CheckpointError(f"{p}: checkpoint version {meta.get('version')!r}, expected "
                              f"{_CHECKPOINT_VERSION}")
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
class _State:
    """What a round may change, captured before it, so an interrupted round leaves no trace.

    Copies are shallow where the round replaces objects instead of writing into them:
    the global vector, the error-feedback residual arrays and the downlink view are
    always new arrays; the user factors, the server optimizer (its moments appear at the
    first step) and the downlink's per-client sync numbers change in place, so they are
    copied.
    """

    global_vec: np.ndarray
    optimizer: ServerOptimizer
    user_factors: torch.Tensor
    user_bias: torch.Tensor
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
    def capture(cls, sim: Simulation) -> _State:
        downlink = copy.copy(sim.downlink)
        downlink.last_sync, downlink.sizes = sim.downlink.last_sync.copy(), list(sim.downlink.sizes)
        return cls(
            global_vec=sim.global_vec,
            optimizer=copy.deepcopy(sim.optimizer),
            user_factors=sim.pool.user_factors.clone(), user_bias=sim.pool.user_bias.clone(),
            residuals=dict(sim.uplink.feedback.residuals), spread=sim.uplink.spread,
            last_coords=sim.uplink.last_coords, downlink=downlink,
            privacy=sim.privacy.state() if sim.privacy is not None else None,
            next_round=sim.next_round, rounds=len(sim.rounds), last_eval=sim.last_eval, stopped=sim.stopped,
        )

    def restore(self, sim: Simulation) -> None:
        if sim.privacy is not None:
            sim.privacy.restore(self.next_round, self.privacy)
        sim.global_vec = self.global_vec
        sim.optimizer = self.optimizer
        sim.pool.user_factors, sim.pool.user_bias = self.user_factors, self.user_bias
        sim.uplink.feedback.residuals = self.residuals
        sim.uplink.spread, sim.uplink.last_coords = self.spread, self.last_coords
        sim.downlink = self.downlink
        sim.next_round, sim.last_eval, sim.stopped = self.next_round, self.last_eval, self.stopped
        del sim.rounds[self.rounds:]


def run_experiment(
    config: ExperimentConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Build a :class:`Simulation`, optionally resume it from ``checkpoint``, run it, return the report.

    Raises:
        CheckpointError: ``resume`` and the checkpoint is unreadable, not ours or of another
            configuration (nothing was run).
        RunInterrupted: Ctrl-C during the rounds; carries the partial report, and the
            checkpoint holds the last completed round (:meth:`Simulation.run`).
    """
    sim = Simulation(config, dataset=dataset)
    if resume:
        if checkpoint is None:
            raise CheckpointError("resume needs a checkpoint path")
        if Path(checkpoint).exists():
            sim.load_checkpoint(checkpoint)
    return sim.run(checkpoint=checkpoint, progress=progress)

"""The in-process federated simulator: sampling, local training, aggregation, the server step, evaluation.

One round (docs/ARCHITECTURE.md "The data path of one round"):

1. Poisson sampling: each client joins with probability ``sample_rate``
   (independently, so DP accounting with rate q is exact).
2. The sampled clients receive the global vector and train the model
   (``--model``, :mod:`securefedrec.models.registry`) locally
   (:class:`~securefedrec.models.pool.ClientPool`); each delta is clipped to
   ``[-update_clip, update_clip]`` per coordinate, the range the protocols
   encode, so every protocol computes the same function.
   With ``compression`` (:mod:`securefedrec.compression`) the broadcast is a
   quantized delta, the deltas pass through random-k / top-k with per-client
   error feedback, and q8 / q16 narrow the protocol's ring.
3. The aggregator (``protocols``) returns the survivors' sum, or aborts; an
   aborted round leaves the model unchanged and training goes on.
4. The server optimizer (:mod:`securefedrec.server.optimizers`) applies ``sum / (q * N)``.
5. Every ``eval_every`` rounds, each client evaluates locally (:mod:`securefedrec.metrics`):
   RMSE / MAE on explicit data, HR@10 / NDCG@10 against the run's sampled negatives on
   implicit data; after the last round, every metric (the report's ``final``).

All randomness of round r comes from ``numpy.random.default_rng([seed, r, stream])``,
so a run resumed from a checkpoint (:mod:`securefedrec.server.checkpoint`)
reproduces the uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from protocols import (
    MIN_INPUTS,
    AggregationAborted,
    Aggregator,
    RoundConfig,
    Stage,
    aggregator_class,
    get_aggregator,
    sample_dropouts,
)
from securefedrec import streams
from securefedrec.compression import Downlink, Uplink, parse_compression
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset, load_dataset, synthetic
from securefedrec.errors import CheckpointError, ConfigError, PrivacyBudgetExhausted, RunInterrupted
from securefedrec.metrics import Evaluation, RankingTask, evaluate
from securefedrec.models.base import Model
from securefedrec.models.compressed import CompressedModel, model_bytes, secure_item_counts
from securefedrec.models.fusion import Fusion, fusion_report
from securefedrec.models.mf import MF, Hyper, Layout
from securefedrec.models.pool import ClientPool, resolve_device
from securefedrec.models.registry import MODELS, build_model, get_model
from securefedrec.privacy import RoundPrivacy, SkellamUserPrivacy, build_privacy
from securefedrec.report import environment
from securefedrec.server import checkpoint as checkpoints
from securefedrec.server.checkpoint import Snapshot
from securefedrec.server.optimizers import ServerOptimizer, get_optimizer, rounding_noise_std
from securefedrec.server.submodel import SubmodelRounds

__all__ = ["Simulation", "poisson_sample", "round_generator", "run_experiment"]


def load_configured_dataset(config: ExperimentConfig) -> Dataset:
    """The data set an :class:`~securefedrec.config.ExperimentConfig` names."""
    data = config.data
    if data.dataset == "synthetic":
        return synthetic(data.synthetic_users, data.synthetic_items, data.synthetic_ratings_per_user,
                         seed=config.run.seed, split=data.split, feedback=data.feedback)
    return load_dataset(data.dataset, data.data_dir, data.split, config.run.seed,
                        data_file=data.data_file, columns=data.columns, rating_scale=data.rating_scale,
                        feedback=data.feedback)


def check_feedback(model: type[Model], feedback: str) -> None:
    """Refuse a model that does not learn from ``feedback`` data (its :attr:`Model.feedback`).

    Raises:
        ConfigError: naming --model and --feedback, and the models that fit.
    """
    if feedback in model.feedback:
        return
    fits = [name for name, cls in MODELS.items() if feedback in cls.feedback]
    raise ConfigError(
        f"--model {model.name} learns from {' and '.join(model.feedback)} feedback only, not --feedback "
        f"{feedback}; models for {feedback} feedback: {', '.join(fits) if fits else 'none registered'}")


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


def poisson_sample(seed: int, round_id: int, num_clients: int, rate: float) -> list[int]:
    """The clients of round ``round_id``: each of ``num_clients`` joins with probability ``rate``.

    Drawn from the run's public seed, so every party can recompute it: a Flower node refuses a
    round whose client list is not this one (:func:`securefedrec.flower.node.checks.check_sampled`).
    """
    if rate >= 1.0:
        return list(range(num_clients))
    draws = _round_rng(seed, round_id, streams.SAMPLING).random(num_clients)
    return np.flatnonzero(draws < rate).tolist()


def round_generator(seed: int, round_id: int) -> torch.Generator:
    """The torch generator of round ``round_id``'s local training (negative sampling, ...)."""
    draw = int(_round_rng(seed, round_id, streams.TRAINING).integers(2**62))
    return torch.Generator().manual_seed(draw)


class Simulation:
    """A federated run of the configured model that can be stepped, checkpointed and resumed.

    Args:
        config: the experiment.
        dataset: use this instead of loading ``config.data.dataset``.
        aggregator: use this instead of ``get_aggregator(config.federation.protocol)``.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        dataset: Dataset | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.run.device)
        self.dataset = dataset if dataset is not None else load_configured_dataset(config)
        if self.dataset.feedback != config.data.feedback:
            raise ConfigError(f"--feedback {config.data.feedback}: the data set given holds "
                              f"{self.dataset.feedback} feedback")
        self.model: Model = build_model(config, self.dataset.num_items, dataset=self.dataset)
        # the configured model's kind (a fusion checks its members; a compressed model wraps --model)
        check_feedback(type(self.model) if isinstance(self.model, Fusion) else get_model(config.model.name),
                       self.dataset.feedback)
        if isinstance(self.model, Fusion):  # its weights are fitted on the validation split, if any
            self.model.use_validation(self.dataset.validation, self.dataset.num_users)
        self._ranking: RankingTask | None = None  # the evaluation negatives, drawn at the first use
        groups = None
        if config.privacy.silos is not None:  # cross-silo: --silos S groups the users into S clients
            from securefedrec.privacy import silo_groups

            groups = silo_groups(self.dataset.num_users, config.privacy.silos, config.run.seed)
        self.pool = ClientPool(self.dataset.train, self.dataset.num_users, self.model,
                               groups=groups, device=self.device, seed=config.run.seed)
        options: dict[str, Any] = ({} if config.federation.threat_model == "default"
                                   else {"malicious": config.federation.threat_model == "malicious"})
        protocol = aggregator_class(config.federation.protocol)
        if protocol.parallel_clients:
            # clients are separate machines: simulate them on every core (paillier: encryption
            # randomness; secagg: key agreement, signatures, masks), ~2x per round on 2 cores
            options["workers"] = usable_cpus()
        if protocol.sparse_graph and config.federation.dropout > 0:  # size the graph for the dropout
            options["dropout_rate"] = dropout_by_unmask(config.federation.dropout)
        if protocol.pairwise_masks:  # the corrupted share holders t' must count
            options["corruption_rate"] = config.federation.corruption_rate
        self.aggregator = aggregator or get_aggregator(config.federation.protocol, **options)
        self.submodel: SubmodelRounds | None = None  # --submodel: clients send only their rows
        if config.federation.submodel:
            self.submodel = SubmodelRounds(self.model, config.federation.item_epsilon,
                                           malicious=config.federation.threat_model != "semi-honest",
                                           workers=options.get("workers", 1), sparse=protocol.sparse_graph,
                                           dropout_rate=options.get("dropout_rate", 0.05),
                                           corruption_rate=config.federation.corruption_rate)
        self.count_round: dict[str, Any] | None = None
        if isinstance(self.model, CompressedModel) and self.model.needs_popularity:
            self._count_popularity(self.model)
        # from the public rating scale only (no data is peeked at)
        init = self.model.init_global(self.dataset.scale, torch.Generator().manual_seed(config.run.seed))
        self.global_vec: np.ndarray = init.numpy()
        # compression (securefedrec.compression): uplink with error feedback, compressed broadcast
        self.uplink = Uplink(parse_compression(config.compression.codec), config.run.seed)
        self.downlink = Downlink(self.uplink.compressor, self.global_vec, self.pool.num_clients)
        self.next_round = 0
        self.rounds: list[dict[str, Any]] = []
        self.last_eval: Evaluation | None = None
        # differential privacy (securefedrec.privacy); sigma is calibrated here, before any training
        self.privacy: RoundPrivacy | None = build_privacy(config, self.pool, self.model)
        self.optimizer = self._new_optimizer()  # after the privacy and uplink: its noise floor reads both
        # sparse client messages only where the protocol may reveal which coordinates are non-zero
        # and nothing downstream needs the dense vector (noise, compression, several epochs, silos)
        self.sparse_updates = bool(
            getattr(type(self.aggregator), "accepts_sparse", False) and self.model.sparse_updates
            and self.privacy is None
            and config.compression.codec == "none" and config.model.local_epochs == 1
            and config.privacy.silos is None
        )
        self.stopped: str | None = None

    def _count_popularity(self, model: CompressedModel) -> None:
        """The popularity count round of ``mixed`` / ``prune`` (:func:`.compressed.secure_item_counts`)."""
        cfg = self.config
        if cfg.privacy.mode != "none":
            raise ConfigError(f"--model-compression {cfg.model.compression}: the popularity count round is "
                              f"not covered by --dp {cfg.privacy.mode}'s accounting; use hash, qr or int8 "
                              f"with DP")
        counts, self.count_round = secure_item_counts(
            self.aggregator, self.pool, self.dataset.num_items,
            threshold_fraction=cfg.federation.threshold_fraction, ring_bits=cfg.federation.ring_bits,
            neighbors=cfg.federation.neighbors, rng=np.random.default_rng([cfg.run.seed, streams.ROUNDING]))
        model.set_popularity(counts)

    @property
    def layout(self) -> Layout:
        """Where MF's parameters sit in the global vector (DP, DP-SGD silos and the attacks read it)."""
        return self._mf().layout

    @property
    def hyper(self) -> Hyper:
        """MF's hyper-parameters (the attacks re-solve user factors with them)."""
        return self._mf().hyper

    def _mf(self) -> MF:
        if not isinstance(self.model, MF):
            raise ConfigError(f"this part of securefedrec reads biased MF's parameters and needs --model mf, "
                              f"not {self.model.name!r}")
        return self.model

    def _new_optimizer(self) -> ServerOptimizer:
        """The configured server optimizer, before any step."""
        cfg = self.config
        # the rounding noise of the configured encoding at the expected number of clients, per
        # coordinate of the mean delta, for every protocol alike (server/optimizers.py Notes)
        expected = cfg.federation.sample_rate * self.pool.num_clients
        n = max(1, round(expected))
        floor = rounding_noise_std(self.round_config(0, n), n) / expected
        return (get_optimizer(cfg.server.optimizer, cfg.server.lr)
                .with_decay(cfg.server.decay, self.model.decay_span).with_noise_floor(floor))

    # ------------------------------------------------------------------ one round
    def sample(self, round_id: int) -> list[int]:
        """Poisson sampling of the clients for ``round_id`` (:func:`poisson_sample`)."""
        return poisson_sample(self.config.run.seed, round_id, self.pool.num_clients,
                              self.config.federation.sample_rate)

    def round_config(self, round_id: int, n: int) -> RoundConfig:
        """The protocol settings for a round with ``n`` sampled clients."""
        cfg = self.config
        # a secure sum holds at least MIN_INPUTS inputs (a deployment's nodes refuse less)
        floor = MIN_INPUTS if aggregator_class(cfg.federation.protocol).secure else 1
        threshold = max(floor, math.ceil(cfg.federation.threshold_fraction * n))
        config = self.uplink.round_config(RoundConfig(  # q8/q16 narrow the ring to 8/16 + ceil(log2 n)
            round_id=round_id,
            # with user-level DP the range must also hold each client's noise share (privacy.py Notes)
            clip_range=cfg.model.update_clip if self.privacy is None else self.privacy.encoding_range(
                threshold, cfg.model.update_clip),
            ring_bits=cfg.federation.ring_bits,
            threshold=threshold,
            neighbors=cfg.federation.neighbors,
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
            "bytes_up": 0, "bytes_down": 0, "rmse": None, "mae": None, "hr@10": None, "ndcg@10": None,
            "epsilon": None, "server_epsilon": None, "model_bytes": model_bytes(self.model),
        }
        if 0 < len(sampled) < MIN_INPUTS and aggregator_class(cfg.federation.protocol).secure:
            # the secure sum of one input is that input: the round is not run (nothing leaves a client)
            record.update(aborted=True, error=f"{len(sampled)} client sampled; a secure sum needs at least "
                                              f"{MIN_INPUTS}: round skipped, the model is unchanged")
        elif sampled:
            round_cfg = self.round_config(r, len(sampled))
            # clients train on what the (compressed) broadcast gave them
            view, bytes_down = self.downlink.broadcast(
                self.global_vec, sampled, _round_rng(cfg.run.seed, r, streams.DOWNLINK))
            if isinstance(self.model, CompressedModel) and self.downlink.codec is None:
                bytes_down = self.model.broadcast_bytes * len(sampled)  # int8: the stored form is sent
            g = torch.from_numpy(view)
            inputs: dict[int, Any]
            generator = round_generator(cfg.run.seed, r)
            if self.sparse_updates:  # the insecure baseline: clients send only their non-zeros
                sparse = self.pool.train_sparse(sampled, g, cfg.model.local_lr, cfg.model.update_clip,
                                                generator)
                inputs = dict(zip(sampled, sparse, strict=True))
            else:
                dp_trained = self.privacy.train(sampled, g, r) if self.privacy is not None else None
                trained = (dp_trained if dp_trained is not None
                           else self.pool.train(sampled, g, cfg.model.local_epochs, cfg.model.local_lr,
                                                generator))
                bound = cfg.model.update_clip
                deltas = trained.clamp_(-bound, bound).to("cpu", torch.float64).numpy()
                if self.privacy is not None:  # each client clips and adds its noise share (skellam: int64)
                    deltas = self.privacy.privatize(
                        deltas, sampled, round_cfg.threshold, r)
                inputs = {cid: deltas[j] for j, cid in enumerate(sampled)}
            t_train = time.perf_counter()
            dropout = cfg.federation.dropout
            plan = (sample_dropouts(sampled, dropout, _round_rng(cfg.run.seed, r, streams.DROPOUT))
                    if dropout > 0 else {})
            if hasattr(self.aggregator, "rng"):
                self.aggregator.rng = _round_rng(cfg.run.seed, r, streams.ROUNDING)
            record.update(bytes_down=bytes_down, bytes_broadcast=bytes_down)  # from the encoded broadcast
            try:
                if self.submodel is not None:  # only each client's rows go down and up
                    sub, rows_down = self.submodel.aggregate(deltas, sampled, round_cfg, plan,
                                                             _round_rng(cfg.run.seed, r, streams.ROUNDING))
                    result = sub.result
                    record.update(bytes_down=rows_down, bytes_broadcast=rows_down,
                                  item_epsilon=cfg.federation.item_epsilon, rows_union=sub.union,
                                  rows_reported=float(np.mean(list(sub.reported.values()))))
                else:
                    result = self.uplink.aggregate(  # compress (randk/topk + error feedback), then aggregate
                        self.aggregator, inputs, round_cfg, plan)
            except AggregationAborted as exc:
                record.update(aborted=True, dropped=len(sampled) - exc.survivors, error=str(exc))
            else:
                mean = result.total / (cfg.federation.sample_rate * self.pool.num_clients)
                # random-k: only the public selection carries information (lazy step, server/optimizers.py)
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
        if (r + 1) % cfg.run.eval_every == 0 or r + 1 == cfg.federation.rounds:
            ev = self.evaluate()
            record.update({"rmse": ev.rmse, "mae": ev.mae, "hr@10": ev.hr, "ndcg@10": ev.ndcg})
        record["seconds"] = time.perf_counter() - t0
        self.rounds.append(record)
        self.next_round = r + 1
        return record

    @property
    def implicit(self) -> bool:
        """Whether the run learns from implicit feedback (judged by ranking, not by RMSE)."""
        return self.dataset.feedback == "implicit"

    @property
    def ranking_task(self) -> RankingTask:
        """Targets and sampled negatives of the evaluation, drawn once per run from the data set and
        the seed only (the same for every model and protocol of the run)."""
        if self._ranking is None:
            cfg = self.config
            self._ranking = RankingTask.build(self.dataset, cfg.data.eval_negatives, cfg.run.seed)
        return self._ranking

    def evaluate(self, ranking: bool = False) -> Evaluation:
        """Every client evaluates the current global model locally.

        ``ranking=False`` (each round): RMSE / MAE on explicit data, HR@10 / NDCG@10 on implicit
        data. ``ranking=True`` (the final evaluation): every metric of the feedback kind, the
        full-catalogue Recall@20 / NDCG@20 included (RMSE / MAE: explicit only).
        """
        ev = evaluate(
            torch.from_numpy(self.global_vec), self.model, self.pool.data,
            self.dataset.test, self.dataset.scale,
            task=self.ranking_task if ranking or self.implicit else None,
            errors=not self.implicit, full_ranking=ranking, device=self.device, local=self.pool.local,
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
            with tqdm(range(self.next_round, self.config.federation.rounds),
                      desc=f"{self.config.federation.protocol} rounds",
                      disable=not progress, unit="round", initial=self.next_round,
                      total=self.config.federation.rounds) as bar:
                for _ in bar:
                    try:
                        record = self._complete_round(checkpoint)
                    except PrivacyBudgetExhausted as exc:
                        self.stopped = f"privacy budget exhausted: {exc}"
                        break
                    if record["rmse"] is not None:
                        bar.set_postfix(rmse=f"{record['rmse']:.4f}")
                    elif record["hr@10"] is not None:
                        bar.set_postfix({"hr@10": f"{record['hr@10']:.4f}"})
                    if on_round is not None:
                        on_round(record)
            final: dict[str, Any] | None = self.evaluate(ranking=True).as_dict()
            if final is not None and isinstance(self.model, Fusion):  # members alone, prior, weights
                final = {**final, **self.fusion_report()}
        except KeyboardInterrupt:
            raise RunInterrupted(self._report(None, "interrupted", t0)) from None
        return self._report(final, self.stopped, t0)

    def fusion_report(self) -> dict[str, Any]:
        """``--fusion``: the members alone, the fusion with the prior's weights, every client's weights
        (:func:`~securefedrec.models.fusion.fusion_report`)."""
        if not isinstance(self.model, Fusion):
            raise ConfigError("the fusion report needs --fusion")
        return fusion_report(self.model, self.global_vec, self.pool.local, self.pool.data, self.dataset.test,
                             self.dataset.scale, task=self.ranking_task, errors=not self.implicit,
                             device=self.device, bytes_up=sum(int(r["bytes_up"]) for r in self.rounds))

    def _complete_round(self, checkpoint: str | Path | None) -> dict[str, Any]:
        """One round and its checkpoint, or neither: any exception restores the state before it."""
        before = Snapshot.capture(self)
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
            "model_bytes": model_bytes(self.model),
            "count_round": self.count_round,
            "environment": environment(self.device),
            "seconds": time.perf_counter() - t0,
        }

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write everything needed to continue this run to ``path`` (.npz)."""
        return checkpoints.save(self, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from ``path``; its configuration must equal ours except for ``rounds``.

        Every check passes before anything changes: a file that is empty, truncated,
        not ours, or written by another configuration leaves this simulation as it was.

        Raises:
            CheckpointError: one line naming the file and what is wrong with it.
        """
        checkpoints.load(self, path, self._new_optimizer())

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

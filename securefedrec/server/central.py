"""The centralised baseline: the same implicit model trained on the pooled data of every user.

The federated gap of a model (issue 16) is its federated HR@10 against this: one trainer
that holds every user's training interactions, the whole item table, the shared dense part
and every user's local part as parameters, and trains them with Adam on shuffled minibatches,
as the centralised NCF of He et al. (WWW'17) does. Each sample is one (user, positive) pair
with ``negatives`` items the user has not interacted with, drawn afresh every epoch by the
clients' own sampler (:func:`~securefedrec.models.implicit.sample_negatives`); the loss is the
clients' loss (:func:`~securefedrec.models.implicit.implicit_loss`: BCE or BPR, averaged over the
minibatch's samples, plus ``weight_decay`` on the rows and user embeddings each sample reads).

Initial values, data and evaluation come from a :class:`~securefedrec.server.simulation.Simulation`
of the same configuration: the same initial global vector and local part as the federated run,
the same training interactions, and the same evaluation (:meth:`Simulation.evaluate`, the same
sampled negatives), so the two numbers differ only by how the model was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from securefedrec import streams
from securefedrec.errors import ConfigError
from securefedrec.models.base import LocalPart
from securefedrec.models.implicit import ImplicitModel, implicit_loss, previous_columns, sample_negatives
from securefedrec.server.simulation import Simulation

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig
    from securefedrec.data import Dataset
    from securefedrec.metrics import Evaluation

__all__ = ["CENTRAL_STREAM", "central_evaluation", "train_centrally"]

CENTRAL_STREAM = streams.CENTRAL
"""Stream id of the trainer's generator, ``numpy.random.default_rng([seed, CENTRAL_STREAM])``
(it draws the negatives and the shuffles)."""


def train_centrally(
    config: ExperimentConfig,
    dataset: Dataset | None = None,
    epochs: int = 20,
    *,
    lr: float = 1e-3,
    batch_size: int = 256,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, LocalPart]:
    """Train ``config``'s implicit model on the pooled training data; return (global vector, local part).

    Args:
        config: the experiment (model, its hyper-parameters, data, seed, device); the federation
            and privacy settings are not used.
        dataset: use this instead of loading ``config.data.dataset``.
        epochs: passes over every training interaction.
        lr: Adam's learning rate.
        batch_size: (user, positive) samples per step, each with its ``negatives`` negatives.
        on_epoch: called after each epoch with its index and mean minibatch loss.

    Returns:
        The global vector (L,) float64 on the CPU, and every user's local part (CPU, rows by user
        id), ready for :func:`central_evaluation`.

    Raises:
        ConfigError: the model is not an implicit model, or ``epochs`` / ``batch_size`` / ``lr``
            is out of range.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"train_centrally: epochs and batch_size must be >= 1 and lr > 0, got "
                          f"epochs={epochs}, batch_size={batch_size}, lr={lr}")
    sim = Simulation(config, dataset=dataset)
    model = sim.model
    if not isinstance(model, ImplicitModel):
        raise ConfigError(f"--model {model.name}: the centralised trainer needs an implicit model "
                          f"(implicit-mf, ncf)")
    layout, hyper, device, dtype = model.layout, model.hyper, sim.device, sim.pool.dtype
    seed = int(np.random.default_rng([config.run.seed, CENTRAL_STREAM]).integers(2**62))
    generator = torch.Generator().manual_seed(seed)

    g = torch.from_numpy(sim.global_vec).to(device=device, dtype=dtype)
    table = layout.table(g).clone().requires_grad_()
    shared = layout.shared(g).clone().requires_grad_()
    local = {name: value.to(device=device, dtype=dtype).clone().requires_grad_()
             for name, value in sim.pool.local.items()}
    params = [table, shared, *local.values()]
    opt = torch.optim.Adam([p for p in params if p.numel()], lr=lr)

    data = sim.pool.data
    users = np.flatnonzero(data.counts > 0)
    batch = data.padded(users, device, dtype)
    real = batch.mask > 0
    pos_user = torch.as_tensor(users, device=device)[:, None].expand_as(batch.items)[real]
    pos_item = batch.items[real]
    n, k = len(pos_item), hyper.negatives
    # a model with a history window reads the interactions before each positive (models/implicit.py)
    cols, valid = previous_columns(batch.mask, model.window)
    prev_item = batch.items[torch.arange(len(users), device=device)[:, None, None], cols][real]  # (n, window)
    prev_valid = valid[real]
    pos_mask = torch.ones(batch_size, 1, device=device, dtype=dtype)
    neg_mask = torch.ones(batch_size, k, device=device, dtype=dtype)
    per_sample = 1 + k if hyper.loss == "bce" else k  # the terms local_train averages over
    for epoch in range(epochs):
        ((negs, _),) = sample_negatives(batch, layout.num_items, k, generator)
        neg_item = negs.view(len(users), -1, k)[real]  # (n, k): the negatives of each positive
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, batch_size):
            at = order[start : start + batch_size]
            b = len(at)
            u = pos_user[at]
            items = torch.cat([pos_item[at, None], neg_item[at]], dim=1)  # (b, 1 + k)
            rows = table[items]
            user = {name: value[u] for name, value in local.items()}
            context = (model.context(table[prev_item[at]][:, None], prev_valid[at][:, None])
                       if model.window else {})
            logits = model.logits(rows, shared.expand(b, layout.dense), user | context)
            loss = implicit_loss(logits, 1, pos_mask[:b], neg_mask[:b], hyper).sum()
            if hyper.weight_decay:
                user_sq = torch.stack([(v**2).sum() for v in user.values()]).sum()
                loss = loss + hyper.weight_decay * ((rows**2).sum() + (1 + k) * user_sq)
            loss = loss / (b * per_sample)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * b
        if on_epoch is not None:
            on_epoch(epoch, total / max(1, n))
    with torch.no_grad():
        vec = torch.cat([table.reshape(-1), shared]).to("cpu", torch.float64)
        out = {name: value.detach().to("cpu", sim.pool.dtype) for name, value in local.items()}
    return vec, out


def central_evaluation(
    config: ExperimentConfig, dataset: Dataset | None, global_vec: torch.Tensor, local: LocalPart
) -> Evaluation:
    """Every metric of the federated run's final evaluation, of a centrally trained model.

    It is :meth:`Simulation.evaluate` (``ranking=True``) of a simulation of ``config`` whose
    global vector and local part are replaced by the trained ones: the same users, targets and
    sampled negatives (drawn from the data set and seed only) as the federated run's ``final``.
    """
    sim = Simulation(config, dataset=dataset)
    if global_vec.shape != (sim.model.length,):
        raise ConfigError(f"central_evaluation: the global vector has shape {tuple(global_vec.shape)}, "
                          f"--model {sim.model.name} needs ({sim.model.length},)")
    sim.global_vec = global_vec.to("cpu", torch.float64).numpy().copy()
    sim.pool.local = {name: local[name].to("cpu", value.dtype).clone()
                      for name, value in sim.pool.local.items()}
    return sim.evaluate(ranking=True)

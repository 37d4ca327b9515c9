"""Personalization (``--personalize``): a personal score function that never leaves the device.

With ``personalize``, each user of a model with a shared dense part (NCF: its MLP and output
layer, i.e. the score function every item goes through) also keeps, in its local part
(:meth:`~securefedrec.models.base.Model.local_shapes`), ``personal_dense`` (P,): an additive
offset to that dense part, as PFedRec (IJCAI'23) keeps the score function on the device. The
user predicts with ``global dense part + offset`` (:meth:`ImplicitModel.scores`).

The offset starts at zero and is trained on the device only:

1. each local epoch first takes the *global step*, exactly as without ``personalize``: the
   loss of the score from the client's local copy of the global part and the user
   embeddings; the delta is ``local copy - global``, and no personal value enters it (the
   delta is bit-identical whatever the personal part, tests/models/test_personal.py);
2. then the *personal step*, on the same samples: the client's mean loss of the personalized
   score, with its gradient to the offset only (the local copy and the user embeddings held
   fixed), plus ``personal_decay`` times the offset's squared norm per sample, which pulls
   the personal score function back toward the global one; a step of the local optimizer of
   ``local_lr``.

Why not personal item rows (FedRAP's additive personal item embedding, PFedRec's locally
fine-tuned item embeddings): a client trains an item's personal row only on the items it
touches, its training interactions and the negatives it draws, and the leave-one-out
evaluation ranks none of its training items; the held-out item and the 99 evaluation
negatives get personal rows only by being drawn as training negatives, which pushes them
down at random. On ML-100K loo (implicit-mf, 30 rounds, local SGD lr 30, 2 epochs) such
offsets lowered HR@10 from 0.6225 to 0.6055 (seed 0) and 0.6373 to 0.6235 (seed 1), and
cost 943 * 1682 * 33 * 4 B = 209 MB. An offset of the score function applies to every item.
Implicit MF has no shared score function (its user embedding, already local, is one), so
``personalize`` applies to NCF only.

Memory: ``users * P`` floats (ML-100K, layers 64,32,16: 943 * 2657 * 4 B = 10 MB);
:func:`check_personal_size` refuses more than :data:`PERSONAL_MAX_BYTES`.
"""

from __future__ import annotations

import torch

from securefedrec.errors import ConfigError

__all__ = ["PERSONAL_DENSE", "PERSONAL_MAX_BYTES", "check_personal_size", "is_personal", "personal_shapes"]

PERSONAL_DENSE = "personal_dense"
PERSONAL_MAX_BYTES = 1 << 30
"""The most bytes of personal offsets a pool may hold (1 GiB)."""


def is_personal(name: str) -> bool:
    """Whether a local tensor's name is the personal part."""
    return name == PERSONAL_DENSE


def personal_shapes(dense: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of one user's personal part: the offset of the ``dense`` shared values.

    Raises:
        ConfigError: the model has no shared dense part (no score function to personalize).
    """
    if dense < 1:
        raise ConfigError("personalize: applies to a model with a shared score function (--model ncf); "
                          "implicit-mf's score function is its user embedding, already local")
    return {PERSONAL_DENSE: (dense,)}


def check_personal_size(num_users: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
    """Refuse personal offsets of more than :data:`PERSONAL_MAX_BYTES` for ``num_users`` users.

    Raises:
        ConfigError: naming ``personalize``, the size needed and the limit.
    """
    per_user = sum(int(torch.Size(shape).numel()) for shape in shapes.values())
    need = num_users * per_user * torch.empty((), dtype=dtype).element_size()
    if need > PERSONAL_MAX_BYTES:
        raise ConfigError(
            f"personalize: the personal offsets of {num_users} users ({per_user} values each) need "
            f"{need / 2**20:.0f} MiB, more than the limit of {PERSONAL_MAX_BYTES / 2**20:.0f} MiB; "
            "drop --personalize or narrow --mlp-layers")

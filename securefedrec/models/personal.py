"""Personalization of the implicit models (``--personalize``): a personal part that never leaves the device.

With ``personalize``, each user also keeps, in its local part
(:meth:`~securefedrec.models.base.Model.local_shapes`), additive *offsets* to the global
coordinates it scores with:

- ``personal_items`` (items, w): an offset to every item row (FedRAP's additive personal
  item embedding; PFedRec's item embeddings fine-tuned on the device);
- ``personal_dense`` (P,), for a model with a shared dense part (NCF's MLP and output
  layer): an offset to it, i.e. the user's own score function (PFedRec keeps the score
  function on the device).

The user predicts with ``global + offsets`` (:meth:`ImplicitModel.scores`). The offsets
start at zero and are trained on the device only:

1. each local epoch first takes the *global step*, exactly as without ``personalize``: the
   loss of the score from the client's local copy of the global part and the user
   embeddings; the delta is ``local copy - global``, and no personal value enters it (the
   delta is bit-identical whatever the personal part, tests/models/test_personal.py);
2. then the *personal step*, on the same samples: the loss of the personalized score, with
   its gradient to the offsets only (the local copy and the user embeddings are held
   fixed), plus ``personal_decay`` times the squared norm of the offsets it reads, which
   pulls the personal model back toward the global one; an SGD step of ``local_lr``.

Memory: the pool keeps ``users * (items * w + P)`` floats of offsets (ML-100K, 32 factors:
943 * 1682 * 33 * 4 B = 209 MB). :func:`check_personal_size` refuses more than
:data:`PERSONAL_MAX_BYTES` rather than exhaust the memory.
"""

from __future__ import annotations

import torch

from securefedrec.errors import ConfigError
from securefedrec.models.base import LocalPart

__all__ = [
    "PERSONAL_DENSE",
    "PERSONAL_ITEMS",
    "PERSONAL_MAX_BYTES",
    "check_personal_size",
    "is_personal",
    "personal_rows",
    "personal_shapes",
]

PERSONAL_ITEMS = "personal_items"
PERSONAL_DENSE = "personal_dense"
PERSONAL_MAX_BYTES = 1 << 30
"""The most bytes of personal offsets a pool may hold (1 GiB): ML-100K needs 209 MB at 32
factors; ML-1M (6040 users x 3706 items) would need 3 GB and is refused."""


def is_personal(name: str) -> bool:
    """Whether a local tensor's name is one of the personal offsets."""
    return name in (PERSONAL_ITEMS, PERSONAL_DENSE)


def personal_shapes(num_items: int, width: int, dense: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of one user's personal offsets: the item table's, and the dense part's if any."""
    shapes: dict[str, tuple[int, ...]] = {PERSONAL_ITEMS: (num_items, width)}
    if dense:
        shapes[PERSONAL_DENSE] = (dense,)
    return shapes


def check_personal_size(num_users: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
    """Refuse personal offsets of more than :data:`PERSONAL_MAX_BYTES` for ``num_users`` users.

    Raises:
        ConfigError: naming ``--personalize``, the size needed and the limit.
    """
    per_user = sum(int(torch.Size(shape).numel()) for shape in shapes.values())
    need = num_users * per_user * torch.empty((), dtype=dtype).element_size()
    if need > PERSONAL_MAX_BYTES:
        raise ConfigError(
            f"personalize: the personal offsets of {num_users} users ({per_user} values each) need "
            f"{need / 2**20:.0f} MiB, more than the limit of {PERSONAL_MAX_BYTES / 2**20:.0f} MiB; "
            "drop --personalize or lower --factors")


def personal_rows(local: LocalPart, items: torch.Tensor) -> torch.Tensor:
    """The users' item offsets on ``items`` (B, n): (B, n, w), differentiable in ``local``."""
    table = local[PERSONAL_ITEMS]
    index = items[..., None].expand(*items.shape, table.shape[-1])
    return table.gather(1, index)

"""Error feedback: what a sparsifying client computed but has not sent yet (docs/ARCHITECTURE.md, step 5).

Notes:
    With distributed DP a residual carries its own noise share into the round
    where it is finally sent; accounting that assumes each round's release is a
    fresh Gaussian sum is then approximate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from securefedrec.errors import CheckpointError

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Per-client residuals: what a client computed but did not send yet (client-local state).

    ``begin`` adds the residual to a new vector; ``commit`` keeps ``full - sent``.
    The invariant ``sent + residual == full`` holds exactly for every client, so no
    update mass is ever lost, only delayed.
    """

    def __init__(self) -> None:
        self.residuals: dict[int, np.ndarray] = {}

    def begin(self, cid: int, x: np.ndarray) -> np.ndarray:
        """``x`` plus client ``cid``'s residual (a new array)."""
        r = self.residuals.get(cid)
        return np.array(x, dtype=np.float64) if r is None else x + r

    def commit(self, cid: int, full: np.ndarray, sent: np.ndarray) -> None:
        """Keep ``full - sent`` (dense vectors of the same length) for client ``cid``."""
        residual = np.asarray(full, dtype=np.float64) - sent
        if np.any(residual):
            self.residuals[cid] = residual
        else:
            self.residuals.pop(cid, None)

    def keep_all(self, full: Mapping[int, np.ndarray]) -> None:
        """Nothing was sent (the round aborted): every client keeps its whole vector as residual."""
        for cid, v in full.items():
            self.commit(cid, v, np.zeros_like(v, dtype=np.float64))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint."""
        ids = sorted(self.residuals)
        length = next(iter(self.residuals.values())).shape[0] if ids else 0
        values = np.stack([self.residuals[c] for c in ids]) if ids else np.zeros((0, length))
        return {"ef_ids": np.asarray(ids, dtype=np.int64), "ef_values": values}

    def load_arrays(self, arrays: Mapping[str, np.ndarray], length: int) -> None:
        """Restore from :meth:`state_arrays` output (checked before anything changes)."""
        ids, values = arrays.get("ef_ids"), arrays.get("ef_values")
        if ids is None or values is None:
            raise CheckpointError("checkpoint lacks the error-feedback residuals of this compression")
        if values.shape != (ids.shape[0], length) and ids.shape[0]:
            raise CheckpointError(
                f"error-feedback residuals have shape {values.shape}, expected (*, {length})"
            )
        self.residuals = {int(c): np.array(values[i]) for i, c in enumerate(ids)}

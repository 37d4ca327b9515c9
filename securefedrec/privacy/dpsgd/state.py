"""One silo's DP-SGD state between rounds (:class:`SiloState`) and its JSON form for checkpoints.

What the state holds, and why the generators are saved as they are, is the
Checkpoints note of :mod:`securefedrec.privacy.dpsgd.silos`. The decoders
refuse malformed input with a :class:`~securefedrec.errors.CheckpointError`
that names the field (``where``).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from securefedrec.errors import CheckpointError

__all__ = ["STATE_VERSION", "SiloState", "byte_tensor", "decode_array", "decode_bytes", "decode_history",
           "encode_array"]


@dataclass(frozen=True, eq=False)
class SiloState:
    """One silo's DP-SGD state between rounds: what continuing it bit for bit needs.

    Attributes:
        silo: the silo's id (its client id).
        noise_multiplier: sigma of the steps to come; sample_rate: Poisson rate q of each step.
        rounds: rounds this silo trained in.
        history: the Opacus accountant's ``(sigma, q, steps)`` entries.
        user, user_bias: the silo's local part, float32 ``(users, k)`` and ``(users,)``.
        sampler_rng, noise_rng: ``torch.Generator.get_state()`` of the Poisson sampler's and
            the noise's generator (one generator here, so the same bytes: the Checkpoints note of
            :mod:`securefedrec.privacy.dpsgd.silos`).
    """

    silo: int
    noise_multiplier: float
    sample_rate: float
    rounds: int
    history: tuple[tuple[float, float, int], ...]
    user: np.ndarray
    user_bias: np.ndarray
    sampler_rng: bytes
    noise_rng: bytes


STATE_VERSION = 1
"""Version of the JSON form that :meth:`~securefedrec.privacy.dpsgd.silos.SiloDPSGD.state` writes."""


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """``a`` as little-endian float32 in base64, with its shape (JSON-able)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_bytes(value: Any, where: str) -> bytes:
    """The bytes of a base64 string; :class:`CheckpointError` naming ``where`` otherwise."""
    if not isinstance(value, str):
        raise CheckpointError(f"{where}: must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise CheckpointError(f"{where}: not valid base64") from None


def decode_array(value: Any, where: str) -> np.ndarray:
    """The float32 array that :func:`encode_array` wrote; else :class:`CheckpointError` naming ``where``."""
    if (not isinstance(value, dict) or value.get("dtype") != "float32"
            or not isinstance(value.get("shape"), list)):
        raise CheckpointError(f"{where}: must be {{dtype: float32, shape, data}}")
    shape = tuple(value["shape"])
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise CheckpointError(f"{where}: shape {list(shape)} is not a list of sizes")
    raw = decode_bytes(value.get("data"), where)
    if len(raw) != 4 * math.prod(shape):
        raise CheckpointError(f"{where}: {len(raw)} bytes do not hold float32 {list(shape)}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def byte_tensor(raw: bytes) -> torch.Tensor:
    """``raw`` as a uint8 tensor (a ``torch.Generator`` state)."""
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def decode_history(value: Any, where: str) -> tuple[tuple[float, float, int], ...]:
    """An accountant history ``[[sigma >= 0, 0 < q <= 1, steps >= 0], ...]`` (else CheckpointError)."""
    out = []
    entries: list[Any] = list(value) if isinstance(value, list | tuple) else [None]
    for entry in entries:
        ok = isinstance(entry, list | tuple) and len(entry) == 3
        if ok:
            sigma, q, steps = entry
            ok = (all(isinstance(v, int | float) and not isinstance(v, bool) for v in (sigma, q))
                  and isinstance(steps, int) and not isinstance(steps, bool)
                  and math.isfinite(sigma) and sigma >= 0 and 0 < q <= 1 and steps >= 0)
        if not ok:
            raise CheckpointError(f"{where}: must be a list of [sigma >= 0, 0 < q <= 1, steps >= 0], "
                                  f"got {value!r:.80}")
        out.append((float(sigma), float(q), int(steps)))
    return tuple(out)

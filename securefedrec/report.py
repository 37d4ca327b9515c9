"""Run reports: environment record, atomic JSON writing, the RMSE-per-round plot.

Imports no torch (the CLI writes reports before or without a simulation).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["atomic_write_bytes", "environment", "plot_fusion_weights", "plot_rounds", "write_json"]


PACKAGES = ("securefedrec", "torch", "numpy", "cryptography", "opacus", "phe", "gmpy2", "flwr")


def environment(
    device: torch.device | None = None, packages: tuple[str, ...] = PACKAGES
) -> dict[str, Any]:
    """Python, package versions and the compute device."""
    versions: dict[str, str | None] = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dev = str(device) if device is not None else "cpu"
    cuda = None
    if dev.startswith("cuda"):
        import torch

        cuda = torch.cuda.get_device_name(0)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": dev,
        "cuda": cuda,
        "versions": versions,
    }


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Atomically write ``data`` as indented JSON (non-finite floats become null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return atomic_write_bytes(path, json.dumps(clean(data), indent=2).encode())


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` (its folder created) and close it."""
    import matplotlib.pyplot as plt

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return target


def plot_rounds(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """PNG of the test metrics per round, with the protocol and data set in the title.

    Explicit runs: RMSE and MAE. Implicit runs (no RMSE): HR@10 and NDCG@10.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    explicit = any(r.get("rmse") is not None for r in report["rounds"])
    keys, ylabel = ((("rmse", "RMSE"), ("mae", "MAE")), "test error") if explicit else (
        (("hr@10", "HR@10"), ("ndcg@10", "NDCG@10")), "ranking quality (99 sampled negatives)")
    rounds = [r for r in report["rounds"] if r.get(keys[0][0]) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for n, (key, label) in enumerate(keys):
        ax.plot([r["round"] for r in rounds], [r[key] for r in rounds], marker=".", label=label,
                alpha=1.0 if n == 0 else 0.7)
    cfg = report["config"]
    ax.set_title(f"{report['dataset']['name']} - {cfg['protocol']} - {cfg['server_optimizer']}")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_fusion_weights(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """PNG of a ``--fusion`` run's learned weights across clients: one histogram of the personal
    weights per member (and intercept), the prior's weight as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = report["final"]["fusion_weights"]
    names, prior = weights["names"], weights["prior"]
    import numpy as np

    personal = np.asarray(weights["personal"], dtype=np.float64).reshape(-1, len(names))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), dpi=120, squeeze=False)
    for n, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        ax.hist(personal[:, n], bins=30, alpha=0.8)
        ax.axvline(prior[n], color="black", linestyle="--", label="prior")
        ax.set_title(name)
        ax.set_xlabel("weight")
    axes[0][0].set_ylabel(f"clients ({len(personal)})")
    axes[0][0].legend()
    fig.suptitle(f"fusion weights - {report['dataset']['name']}")
    fig.tight_layout()
    return _save(fig, path)

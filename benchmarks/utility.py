"""Utility of federated MF vs Surprise SVD on the official MovieLens 100K folds.

    python -m benchmarks.utility --data-dir ../shared/data/ml-100k [--folds u1 u2 u3 u4 u5] [--json F]

For each fold: the federated plaintext run (this project's defaults for
ml-100k) and scikit-surprise's SVD with its default parameters, trained and
tested on the same files in the same process: RMSE per fold, the mean, and
wall time each. It also times one federated epoch over all 943 clients (one
local epoch each, plaintext aggregation and the server step included) against
one SVD epoch (fit time / n_epochs), and prints the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import table, write_json
from securefedrec import ExperimentConfig, Simulation
from securefedrec.data import load_ml100k

FOLDS = ("u1", "u2", "u3", "u4", "u5")


def surprise_svd(data_dir: Path, fold: str, seed: int) -> dict[str, float]:
    """Surprise SVD with default parameters on one official fold."""
    from surprise import SVD, Dataset, Reader, accuracy

    reader = Reader(line_format="user item rating timestamp", sep="\t", rating_scale=(1, 5))
    folds = Dataset.load_from_folds(
        [(str(data_dir / f"{fold}.base"), str(data_dir / f"{fold}.test"))], reader
    )
    from surprise.model_selection import PredefinedKFold

    train, test = next(PredefinedKFold().split(folds))
    algo = SVD(random_state=seed)
    t0 = time.perf_counter()
    algo.fit(train)
    fit = time.perf_counter() - t0
    rmse = accuracy.rmse(algo.test(test), verbose=False)
    return {"rmse": float(rmse), "seconds": time.perf_counter() - t0, "fit_seconds": fit,
            "epoch_seconds": fit / algo.n_epochs}


def federated(data_dir: Path, fold: str, rounds: int, seed: int) -> dict[str, Any]:
    """This project's plaintext federated run on one official fold."""
    cfg = ExperimentConfig(dataset="ml-100k", data_dir=str(data_dir), split=fold, rounds=rounds,
                           sample_rate=1.0, seed=seed, eval_every=rounds, protocol="plaintext")
    t0 = time.perf_counter()
    sim = Simulation(cfg, dataset=load_ml100k(data_dir, fold))
    report = sim.run(progress=False)
    epoch = [r["seconds_train"] + r.get("seconds_clients", 0.0) + r.get("seconds_server", 0.0)
             for r in report["rounds"]]
    return {"rmse": report["final"]["rmse"], "seconds": time.perf_counter() - t0,
            "epoch_seconds": float(np.median(epoch)), "hr@10": report["final"]["hr@10"]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with ml-100k u1.base ...")
    ap.add_argument("--folds", nargs="+", default=list(FOLDS), choices=FOLDS)
    ap.add_argument("--rounds", type=int, default=150,
                    help="federated rounds (default 150)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="output file (default results/utility.json)")
    args = ap.parse_args(argv)
    rows, per_fold = [], {}
    for fold in args.folds:
        fed = federated(args.data_dir, fold, args.rounds, args.seed)
        svd = surprise_svd(args.data_dir, fold, args.seed)
        per_fold[fold] = {"federated": fed, "surprise_svd": svd}
        rows.append([fold, fed["rmse"], svd["rmse"], fed["seconds"], svd["seconds"],
                     fed["epoch_seconds"] / svd["epoch_seconds"]])
        print(f"{fold}: federated {fed['rmse']:.4f}  surprise SVD {svd['rmse']:.4f}", flush=True)
    fed_mean = float(np.mean([per_fold[f]["federated"]["rmse"] for f in args.folds]))
    svd_mean = float(np.mean([per_fold[f]["surprise_svd"]["rmse"] for f in args.folds]))
    epoch_ratio = float(np.median([r[-1] for r in rows]))
    rows.append(["mean", fed_mean, svd_mean, "", "", epoch_ratio])
    print(table(["fold", "fed RMSE", "SVD RMSE", "fed s", "SVD s", "epoch ratio fed/SVD"], rows))
    print(f"mean RMSE ratio federated/SVD: {fed_mean / svd_mean:.4f}; "
          f"one federated epoch costs {epoch_ratio:.2f}x one SVD epoch")
    out = write_json(args.json, "utility", {
        "rounds": args.rounds, "folds": per_fold,
        "mean_rmse": {"federated": fed_mean, "surprise_svd": svd_mean},
        "epoch_time_ratio": epoch_ratio,
    })
    print(f"JSON written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

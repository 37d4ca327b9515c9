"""Catalogue scale: submodel rounds against dense SecAgg+, a round at 1M users, and a fitted cost model.

    python -m benchmarks.scale [--json F] [--quick] [--round-clients 1000] [--skip-round]

Three parts, one JSON (``results/scale.json`` by default):

1. ``points``: real protocol rounds (semi-honest server, no dropout, 32-bit ring) on
   synthetic updates -- dense SecAgg+ at vector lengths up to L = 3.3M (100K items,
   k = 32) and submodel SecAgg (:mod:`protocols.submodel`, item epsilon 4, clients
   with 100 items) at growing n -- with the bytes each client sent and received
   (from the encoded messages) and the seconds per client and for the server.
   ``submodel`` holds the target point's upload ratio (submodel / dense SecAgg+,
   per client, both from this run's cost model fitted on these points, and the
   measured ratio at the largest n measured) and whether the submodel sum was exact
   (equal to the plaintext sum of what the protocol must release, within the
   quantization step, at every coordinate).
2. ``round_1m``: one round of :func:`securefedrec.server.scale.run_scale_round` on a
   lazily generated 1M-user, 100K-item catalogue (:mod:`securefedrec.data.scale`):
   about ``--round-clients`` clients sampled, trained in streamed chunks, summed by
   submodel SecAgg; its seconds and peak memory (the largest of this process and its
   workers), and the cost model's seconds for it (``predicted_seconds``: the clients spread
   over the worker processes, then the server).
3. ``cost_model``: bytes and seconds per client and for the server as linear functions
   of the features of a round (n, catalogue size R, history m, k, protocol, item
   epsilon), fitted by least squares on the points; ``model_fit`` is the worst
   relative error over the measured points and the round; ``table_10m`` predicts a
   round of 10,000 clients out of 10M users on a 1M-item catalogue.

``hidden_upload_ratio`` is null: a mode that hides the item set completely is not
implemented. Seconds are wall seconds on this machine (2 shared cores when measured).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import table, write_json
from protocols import RoundConfig
from protocols.secagg import SecAggPlusAggregator, choose_degree
from protocols.submodel import RowLayout, SubmodelAggregator, SubmodelInput, keep_probability
from protocols.submodel.client import holder_counts
from securefedrec.data.scale import ScaleCatalog
from securefedrec.server.scale import ScaleModel, run_scale_round
from securefedrec.server.simulation import usable_cpus

RING = 32
CLIP = 1.0


@dataclass(frozen=True)
class Point:
    """One round to measure: protocol, clients, catalogue rows R, factors k, history m, item epsilon."""

    protocol: str
    n: int
    rows: int
    k: int
    history: int = 100
    epsilon: float = 4.0

    @property
    def length(self) -> int:
        """Dense vector length L = R (k + 1) + 1."""
        return self.rows * (self.k + 1) + 1


def expected_set(rows: int, history: int, epsilon: float) -> float:
    """E|S| under randomized response: ``m p + (R - m)(1 - p)``."""
    p = keep_probability(epsilon)
    return history * p + (rows - history) * (1 - p)


def features(pt: Point, set_size: float | None = None) -> dict[str, float]:
    """The cost model's features of a round (per client, except ``n``)."""
    n, k, r = pt.n, pt.k, pt.rows
    # both protocols share secrets on SecAgg+'s graph of degree d (the same choice of d)
    d = min(choose_degree(n, threshold=max(1, n // 2), malicious=False), n - 1)
    if pt.protocol == "secagg+":
        return {"n": n, "values": pt.length, "peers": d, "rows_sent": 0.0, "table": 0.0,
                "mask_words": (d + 1) * pt.length, "agreements": 2 * d, "ads": d, "u2": 0.0,
                "length": pt.length, "dense": 1.0}
    s = set_size if set_size is not None else expected_set(r, pt.history, pt.epsilon)
    values = 1 + s * (k + 1)
    # masks against every other client of U2 (n - 1 s-key agreements), shares to d neighbours
    return {"n": n, "values": values, "peers": d, "rows_sent": s, "table": n * (s + 3),
            "mask_words": values + (n - 1) * (1 + s * s / r * (k + 1)), "agreements": n - 1 + d,
            "ads": n, "u2": n, "length": pt.length, "dense": 0.0}  # every advertisement; U2 and U3 ids


# the linear forms: target -> its features (an intercept is added)
FORMS: dict[str, tuple[str, ...]] = {
    "bytes_up": ("values", "peers", "rows_sent"),  # seconds: one set of coefficients per protocol
    "bytes_down": ("peers", "ads", "u2", "table", "n"),
    "client_seconds": ("mask_words", "agreements", "table"),
    # the server decodes all L coordinates; the submodel server also sends each client the whole table
    "server_seconds": ("n_values", "n_peers", "length", "n_table"),
}


SEPARATE = ("client_seconds", "server_seconds")
"""Forms whose coefficients are the protocol's own (the bytes are one law for both: the messages)."""


def _design(f: dict[str, float], target: str) -> list[float]:
    extra = {"n_values": f["n"] * f["values"], "n_peers": f["n"] * f["peers"], "n_table": f["n"] * f["table"]}
    row = [1.0, *({**f, **extra}[name] for name in FORMS[target])]
    if target not in SEPARATE:
        return row
    zeros = [0.0] * len(row)
    return row + zeros if f.get("dense", 0.0) else zeros + row


def fit(points: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Non-negative least-squares coefficients (intercept first) of each form, on relative errors.

    Costs only add up, so every coefficient is kept >= 0 (a negative one would let the model
    predict negative seconds far from the measured points).
    """
    from scipy.optimize import nnls

    out = {}
    for target in FORMS:
        a = np.array([_design(p["features"], target) for p in points])
        y = np.array([p[target] for p in points])
        w = 1.0 / np.maximum(y, 1e-9)  # minimize relative error
        scale = np.maximum(np.abs(a * w[:, None]).max(axis=0), 1e-300)  # condition the columns
        coef, _ = nnls(a * w[:, None] / scale, y * w)
        out[target] = (coef / scale).tolist()
    return out


def predict(coef: dict[str, list[float]], f: dict[str, float]) -> dict[str, float]:
    """Each target of the cost model at features ``f``; downloads add the model rows (float32)."""
    out = {t: float(np.dot(coef[t], _design(f, t))) for t in FORMS}
    out["bytes_down_total"] = out["bytes_down"] + 4 * f["values"] + 9
    return out


def _inputs(pt: Point, rng: np.random.Generator) -> dict[int, SubmodelInput]:
    out = {}
    for c in range(pt.n):
        rows = np.sort(rng.choice(pt.rows, pt.history, replace=False))
        values = rng.uniform(-0.01, 0.01, (pt.history, pt.k + 1))
        out[c] = SubmodelInput(rows, values, rng.uniform(-0.01, 0.01, 1))
    return out


def measure(pt: Point, seed: int = 0) -> dict[str, Any]:
    """Run one round of ``pt``; bytes per client (mean), seconds per client and for the server."""
    rng = np.random.default_rng(seed)
    cfg = RoundConfig(threshold=max(1, pt.n // 2), clip_range=CLIP, ring_bits=RING)
    inputs = _inputs(pt, rng)
    factors = np.arange(pt.rows * pt.k).reshape(pt.rows, pt.k)
    biases = (pt.rows * pt.k + np.arange(pt.rows))[:, None]
    layout = RowLayout(pt.length, np.concatenate([factors, biases], axis=1))  # biased MF's rows
    t0 = time.perf_counter()
    exact = None
    set_size = None
    if pt.protocol == "secagg+":
        dense = {}
        for c, x in inputs.items():
            v = np.zeros(pt.length)
            v[layout.rows[x.rows]] = x.values
            v[layout.shared] = x.shared
            dense[c] = v
        del inputs
        res = SecAggPlusAggregator(malicious=False, workers=usable_cpus(), rng=rng).aggregate(dense, cfg, {})
        model_down = 4 * pt.length + 9
    else:
        agg = SubmodelAggregator(layout, item_epsilon=pt.epsilon, malicious=False, workers=usable_cpus(),
                                 rng=rng)
        sub = agg.aggregate(inputs, cfg, {})
        res = sub.result
        set_size = float(np.mean(list(sub.reported.values())))
        server = agg.last_server
        assert server is not None
        counts = holder_counts(server.table, server.table.keys(), pt.rows)
        want = np.zeros(pt.length)
        for c, x in inputs.items():  # what the protocol must release: kept, non-thin rows
            keep = np.isin(x.rows, server.table[c]) & (counts[x.rows] >= 2)
            want[layout.rows[x.rows[keep]]] += x.values[keep]
            want[layout.shared] += x.shared
        step = 2 * CLIP / 2 ** (RING - math.ceil(math.log2(pt.n)) - 1)
        exact = bool(np.max(np.abs(res.total - want)) <= pt.n * step)
        model_down = float(np.mean([4 * (1 + size * (pt.k + 1)) + 9 for size in sub.reported.values()]))
    wall = time.perf_counter() - t0
    n = pt.n
    return {
        "protocol": pt.protocol, "n": n, "rows": pt.rows, "k": pt.k, "history": pt.history,
        "epsilon": pt.epsilon if pt.protocol == "submodel" else None, "length": pt.length,
        "set_size": set_size, "features": features(pt, set_size),
        "bytes_up": float(np.mean(list(res.bytes_up.values()))),
        "bytes_down": float(np.mean(list(res.bytes_down.values()))),
        "bytes_down_total": float(np.mean(list(res.bytes_down.values()))) + model_down,
        "client_seconds": res.seconds_clients / n, "server_seconds": res.seconds_server, "wall_seconds": wall,
        "exact": exact,
    }


def plan(quick: bool) -> list[Point]:
    """The measured points (``quick``: a tiny set for the smoke test)."""
    if quick:
        return [Point("secagg+", 6, 200, 4), Point("secagg+", 8, 400, 4), Point("secagg+", 10, 100, 4),
                Point("secagg+", 12, 300, 4), Point("submodel", 6, 200, 4, 10, 2.0),
                Point("submodel", 8, 400, 4, 10, 2.0), Point("submodel", 10, 300, 4, 10, 1.0),
                Point("submodel", 12, 200, 4, 10, 3.0)]
    return [Point("secagg+", 20, 1000, 32), Point("secagg+", 20, 10_000, 32),
            Point("secagg+", 40, 10_000, 32), Point("secagg+", 20, 100_000, 32),
            Point("secagg+", 60, 3000, 32),
            Point("submodel", 25, 100_000, 32), Point("submodel", 50, 100_000, 32),
            Point("submodel", 100, 100_000, 32), Point("submodel", 50, 20_000, 32, 100, 2.0),
            Point("submodel", 150, 100_000, 32), Point("submodel", 100, 50_000, 32, 50, 3.0),
            Point("submodel", 300, 100_000, 32)]


def worst_errors(points: list[dict[str, Any]], coef: dict[str, list[float]]) -> dict[str, float]:
    """The worst relative error of the fitted model over the measured points, for bytes and seconds."""
    errs: dict[str, float] = {"bytes_error": 0.0, "seconds_error": 0.0}
    for p in points:
        pred = predict(coef, p["features"])
        for t in ("bytes_up", "bytes_down"):
            errs["bytes_error"] = max(errs["bytes_error"], abs(pred[t] - p[t]) / p[t])
        for t in ("client_seconds", "server_seconds"):
            errs["seconds_error"] = max(errs["seconds_error"], abs(pred[t] - p[t]) / p[t])
    return errs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write the JSON; return it."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="output file (default results/scale.json)")
    ap.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    ap.add_argument("--round-clients", type=int, default=1000, help="clients of the 1M-user round (about)")
    ap.add_argument("--skip-round", action="store_true", help="skip the 1M-user round")
    ap.add_argument("--reuse", help="take the points from this earlier JSON (re-fit, re-run the round)")
    args = ap.parse_args(argv)
    points: list[dict[str, Any]] = []
    if args.reuse:
        points = json.loads(Path(args.reuse).read_text())["points"]
        for p in points:  # the features of this version of the model
            pt = Point(p["protocol"], p["n"], p["rows"], p["k"], p["history"], p["epsilon"] or 4.0)
            p["features"] = features(pt, p["set_size"])
    if not args.reuse:  # warm up (imports, first-call costs) so the first measured point is not an outlier
        measure(Point("secagg+", 4, 200, 4, 10))
        measure(Point("submodel", 4, 200, 4, 10, 1.0))
    for pt in [] if args.reuse else plan(args.quick):
        p = measure(pt)
        points.append(p)
        print(f"{p['protocol']:9s} n={p['n']:4d} R={p['rows']:7d}  up {p['bytes_up']:.0f} B  "
              f"client {p['client_seconds']:.3f} s  server {p['server_seconds']:.2f} s", flush=True)
        write_json(args.json, "scale", {"points": points, "partial": True})  # kept if the run stops
    coef = fit(points)
    errs = worst_errors(points, coef)
    for p in points:  # what the fitted model says at each measured point, beside the measurement
        p["predicted"] = predict(coef, p["features"])
    # the target point: 100K items, k = 32, 100 items per client, 1,000 clients, epsilon 4
    target = {proto: predict(coef, features(Point(proto, 1000, 100_000, 32)))
              for proto in ("secagg+", "submodel")}
    wanted_rows = 200 if args.quick else 100_000
    subs = [p for p in points if p["protocol"] == "submodel" and p["rows"] == wanted_rows]
    biggest = max(subs, key=lambda p: p["n"])
    dense_same = predict(coef, features(Point("secagg+", biggest["n"], biggest["rows"], biggest["k"])))
    submodel = {
        "upload_ratio": target["submodel"]["bytes_up"] / target["secagg+"]["bytes_up"],
        "item_epsilon": 4.0,
        "hidden_upload_ratio": None,
        "exact": all(p["exact"] for p in points if p["exact"] is not None),
        "measured_upload_ratio": biggest["bytes_up"] / dense_same["bytes_up"],
        "measured_at_n": biggest["n"],
    }
    round_1m: dict[str, Any] | None = None
    if not args.skip_round:
        users, items = (20_000, 2_000) if args.quick else (1_000_000, 100_000)
        clients = 30 if args.quick else args.round_clients
        catalog = ScaleCatalog(users=users, items=items, history_median=50)
        model = ScaleModel.init(items, 8 if args.quick else 32)
        workers = usable_cpus()
        rec = run_scale_round(catalog, model, 0, clients / users, workers=workers)
        round_1m = {k: rec[k] for k in ("clients", "users", "items", "seconds", "peak_gib",
                                        "seconds_train", "seconds_aggregate", "bytes_up", "rows_reported")}
        # the cost model checked at the round: its clients spread over the workers, then the server
        at = predict(coef, features(Point("submodel", rec["clients"], items, model.factors.shape[1]),
                                    rec["rows_reported"]))
        round_1m["predicted_seconds"] = (at["client_seconds"] * rec["clients"] / workers
                                         + at["server_seconds"] + rec["seconds_train"])
        errs["seconds_error"] = max(errs["seconds_error"],
                                    abs(round_1m["predicted_seconds"] - rec["seconds"]) / rec["seconds"])
    big = {proto: predict(coef, features(Point(proto, 10_000, 1_000_000, 32)))
           for proto in ("secagg+", "submodel")}
    print(table(["protocol", "n", "R", "up B", "down B", "client s", "server s", "exact"],
                [[p["protocol"], p["n"], p["rows"], p["bytes_up"], p["bytes_down_total"], p["client_seconds"],
                  p["server_seconds"], p["exact"]] for p in points]))
    print(f"model fit: worst relative error bytes {errs['bytes_error']:.3%}, "
          f"seconds {errs['seconds_error']:.1%} (the points and the round)")
    print(f"target (n=1000, 100K items, k=32, 100 items, eps 4): upload ratio {submodel['upload_ratio']:.4f}")
    print("10,000 clients of 10M users, 1M items (cost model):")
    print(table(["protocol", "up MB", "down MB", "client s", "server s"],
                [[proto, v["bytes_up"] / 1e6, v["bytes_down_total"] / 1e6, v["client_seconds"],
                  v["server_seconds"]] for proto, v in big.items()]))
    if round_1m is not None:
        print(f"round: {round_1m['clients']} clients of {round_1m['users']} users, "
              f"{round_1m['items']} items: {round_1m['seconds']:.1f} s (cost model "
              f"{round_1m['predicted_seconds']:.1f} s), peak {round_1m['peak_gib']:.2f} GiB")
    data = {"submodel": submodel, "round_1m": round_1m, "model_fit": errs,
            "cost_model": {"forms": {t: ["intercept", *f] for t, f in FORMS.items()}, "coefficients": coef},
            "target_1000": target, "table_10m": big, "points": points}
    path = write_json(args.json, "scale", data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()

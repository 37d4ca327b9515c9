"""Compressed transmission: bytes up/down per round vs RMSE, for each protocol x compression.

    python -m benchmarks.compression --data-dir ../shared/data/ml-100k --rounds 30 --json F --plot P
    python -m benchmarks.compression --quick

For every protocol in ``--protocols`` and compression in ``--compressions``
(``topk`` only with plaintext: it is refused with secure protocols) one
federated run of the simulator (:class:`securefedrec.server.simulation.Simulation`)
on ml-100k split ``--split`` (default u1): mean ``bytes_up`` / ``bytes_down`` per
round (counted by the simulator from the real encoded messages) and the test
RMSE after ``--rounds`` rounds (``--randk-rounds`` for the sparsifiers, which
deliver their residuals later and may need more). Paillier is costly on the
full vector (one 2048-bit encryption per ~60 values per client), so it runs
``--paillier-rounds`` rounds (default 1: bytes only; its RMSE equals the other
protocols' in distribution, same fixed-point encoding) at sample rate
``--paillier-sample-rate`` (default 0.02, ~19 clients), and the table also
gives the slot layout: values per ciphertext with and without quantization
at the round's number of clients.

Targets checked (printed as PASS / MISS with the measured figure):
secagg+ q8 bytes_up <= 30% of secagg+ none and RMSE within 0.005 (exact q8
cannot reach 30 %: its ring needs 8 + ceil(log2 n) bits, see
securefedrec/compression/__init__.py Notes; the same bounds are checked for ``mod:8``,
which sizes an 8-bit ring for the sum and lets rare overflows wrap); secagg+
randk:0.1 bytes_up <= 12% and RMSE within 0.01; paillier q8 >= 2x values per
ciphertext. ``mod:B`` is skipped with Paillier, which refuses it.

``--quick`` is a smoke run on small synthetic data (3 rounds, paillier 1 round).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, save_figure, table, write_json
from protocols import RoundConfig
from securefedrec.compression import Uplink, parse_compression
from securefedrec.config import ExperimentConfig

PROTOCOLS = ("plaintext", "secagg+", "paillier")
COMPRESSIONS = ("none", "q8", "q16", "randk:0.1", "topk:0.1", "mod:8")


def values_per_ciphertext(n: int, compression: str, key_bits: int = 2048) -> int:
    """Slots of one Paillier plaintext for ``n`` clients under ``compression`` (default ring 32)."""
    from protocols.paillier.aggregator import round_layout
    from protocols.paillier.raw import PublicKey

    public = PublicKey((1 << (key_bits - 1)) + 1)  # only the bit length of n matters for the layout
    cfg = Uplink(parse_compression(compression), 0).round_config(RoundConfig(threshold=1), n)
    return round_layout(n, cfg, public)[1].slots


def run_one(base: dict[str, Any], protocol: str, compression: str, rounds: int) -> dict[str, Any]:
    """One simulated run; mean bytes per round and the final RMSE."""
    from securefedrec.server.simulation import Simulation

    cfg = ExperimentConfig.from_mapping(
        {**base, "protocol": protocol, "compression": compression, "rounds": rounds, "eval_every": rounds}
    )
    t0 = time.perf_counter()
    sim = Simulation(cfg)
    recs = [sim.run_round() for _ in range(rounds)]
    done = [r for r in recs if not r["aborted"] and r["clients"]]
    mean = (lambda key: sum(r[key] for r in done) / len(done)) if done else (lambda key: float("nan"))
    clients = mean("clients")
    return {
        "protocol": protocol, "compression": compression, "rounds": rounds,
        "clients_per_round": clients,
        "bytes_up_per_round": mean("bytes_up"), "bytes_down_per_round": mean("bytes_down"),
        "bytes_up_per_client": mean("bytes_up") / clients if done else float("nan"),
        "rmse": recs[-1]["rmse"], "mae": recs[-1]["mae"],
        "values_per_ciphertext": (values_per_ciphertext(max(1, round(clients)), compression)
                                  if protocol == "paillier" and done else None),
        "per_round": [{k: r[k] for k in ("round", "clients", "bytes_up", "bytes_down", "rmse")}
                      for r in recs],
        "seconds": time.perf_counter() - t0,
    }


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, measured: figure, bound and PASS / MISS."""
    by = {(r["protocol"], r["compression"]): r for r in rows}
    out: list[dict[str, Any]] = []

    def ratio(p: str, c: str, key: str) -> float | None:
        a, b = by.get((p, c)), by.get((p, "none"))
        return None if a is None or b is None else a[key] / b[key]

    def drmse(p: str, c: str) -> float | None:
        a, b = by.get((p, c)), by.get((p, "none"))
        if a is None or b is None or a["rmse"] is None or b["rmse"] is None:
            return None
        return float(a["rmse"] - b["rmse"])

    # mod:8: q8's target met the lossy way; exact q8 cannot go below (8 + ceil(log2 n)) / 32
    bounds = (("q8", 0.30, 0.005), ("mod:8", 0.30, 0.005), ("randk:0.1", 0.12, 0.01))
    for comp, up_bound, rmse_bound in bounds:
        r, d = ratio("secagg+", comp, "bytes_up_per_round"), drmse("secagg+", comp)
        if r is not None:
            out.append({"target": f"secagg+ {comp} bytes_up / none <= {up_bound}", "value": r,
                        "ok": r <= up_bound})
        if d is not None:
            out.append({"target": f"secagg+ {comp} RMSE - none <= {rmse_bound}", "value": d,
                        "ok": d <= rmse_bound})
    a, b = by.get(("paillier", "q8")), by.get(("paillier", "none"))
    if a and b and a["values_per_ciphertext"] and b["values_per_ciphertext"]:
        r = a["values_per_ciphertext"] / b["values_per_ciphertext"]
        out.append({"target": "paillier q8 values per ciphertext >= 2x none", "value": r, "ok": r >= 2})
    return out


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bytes up per round (log x) vs RMSE, one marker per run; the Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["rmse"] is not None and math.isfinite(r["bytes_up_per_round"])]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"plaintext": "o", "secagg": "s", "secagg+": "D", "paillier": "^"}
    colors = {"plaintext": "tab:gray", "secagg": "tab:blue", "secagg+": "tab:orange", "paillier": "tab:green"}
    for proto in dict.fromkeys(r["protocol"] for r in pts):
        mine = [r for r in pts if r["protocol"] == proto]
        ax.scatter([r["bytes_up_per_round"] for r in mine], [r["rmse"] for r in mine],
                   marker=markers.get(proto, "x"), color=colors.get(proto), label=proto)
    for r in pts:
        ax.annotate(f"{r['protocol']} {r['compression']}", (r["bytes_up_per_round"], r["rmse"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    front, best = [], math.inf
    for r in sorted(pts, key=lambda r: r["bytes_up_per_round"]):
        if r["rmse"] < best:
            best = r["rmse"]
            front.append(r)
    if front:
        ax.plot([r["bytes_up_per_round"] for r in front], [r["rmse"] for r in front], "k--", lw=0.8,
                label="Pareto front")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("bytes up per round (all clients)")
    ax.set_ylabel("test RMSE")
    ax.set_title("compression: bytes vs RMSE")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="ml-100k folder (default: synthetic data)")
    p.add_argument("--split", default="u1")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    p.add_argument("--compressions", nargs="+", default=list(COMPRESSIONS))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--randk-rounds", type=int, help="rounds for randk/topk (default --rounds)")
    p.add_argument("--paillier-rounds", type=int, default=1)
    p.add_argument("--paillier-sample-rate", type=float, default=0.02,
                   help="Poisson rate for the Paillier runs (default 0.02: ~19 ml-100k clients)")
    p.add_argument("--sample-rate", type=float, help="Poisson rate q (default: the config's)")
    p.add_argument("--update-clip", type=float, help="per-coordinate clip (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small synthetic smoke run")
    p.add_argument("--json", help="output JSON (default results/compression.json)")
    p.add_argument("--plot", help="Pareto plot PNG (default results/compression.png)")
    args = p.parse_args(argv)

    base: dict[str, Any] = {"device": "cpu", "seed": args.seed}
    if args.quick:
        base.update(synthetic_users=60, synthetic_items=50, synthetic_ratings_per_user=15, factors=8,
                    sample_rate=0.5)
        args.rounds, args.randk_rounds, args.paillier_rounds = 3, 3, 1
    elif args.data_dir:
        base.update(dataset="ml-100k", data_dir=args.data_dir, split=args.split)
    if args.sample_rate is not None:
        base["sample_rate"] = args.sample_rate
    if args.update_clip is not None:
        base["update_clip"] = args.update_clip

    rows: list[dict[str, Any]] = []
    for protocol in args.protocols:
        for comp in args.compressions:
            if comp.startswith("topk") and protocol != "plaintext":
                continue  # refused by design: top-k indices reveal the rated items
            if comp.startswith("mod") and protocol == "paillier":
                continue  # refused by design: Paillier slots cannot wrap
            sparse = comp.startswith(("randk", "topk"))
            rounds = (args.paillier_rounds if protocol == "paillier"
                      else (args.randk_rounds or args.rounds) if sparse else args.rounds)
            over = ({"sample_rate": args.paillier_sample_rate}
                    if protocol == "paillier" and not args.quick else {})
            row = run_one({**base, **over}, protocol, comp, rounds)
            rows.append(row)
            print(f"  {protocol} {comp}: {rounds} rounds, {row['seconds']:.0f} s, "
                  f"up {row['bytes_up_per_round']:.4g} B/round, RMSE {row['rmse']}", flush=True)
            write_json(args.json, "compression", {"args": vars(args), "base_config": base, "runs": rows,
                                                  "partial": True})

    none = {r["protocol"]: r for r in rows if r["compression"] == "none"}
    print(table(
        ["protocol", "compression", "rounds", "clients", "up B/round", "up vs none", "down B/round",
         "down vs none", "RMSE", "dRMSE", "values/ct"],
        [[r["protocol"], r["compression"], r["rounds"], f"{r['clients_per_round']:.0f}",
          f"{r['bytes_up_per_round']:.4g}",
          (f"{r['bytes_up_per_round'] / none[r['protocol']]['bytes_up_per_round']:.3f}"
           if r["protocol"] in none else "-"),
          f"{r['bytes_down_per_round']:.4g}",
          (f"{r['bytes_down_per_round'] / none[r['protocol']]['bytes_down_per_round']:.3f}"
           if r["protocol"] in none else "-"),
          "-" if r["rmse"] is None else f"{r['rmse']:.4f}",
          ("-" if r["rmse"] is None or r["protocol"] not in none or none[r["protocol"]]["rmse"] is None
           else f"{r['rmse'] - none[r['protocol']]['rmse']:+.4f}"),
          r["values_per_ciphertext"] or "-"] for r in rows],
    ))
    slots: dict[str, dict[str, int]] = {}
    for n in sorted({max(1, round(r["clients_per_round"])) for r in rows if r["clients_per_round"] > 0}):
        slots[str(n)] = {c: values_per_ciphertext(n, c) for c in ("none", "q16", "q8")}
        print(f"paillier 2048-bit, n={n} clients: values per ciphertext "
              + ", ".join(f"{c} {v}" for c, v in slots[str(n)].items())
              + f" (q8/none = {slots[str(n)]['q8'] / slots[str(n)]['none']:.2f}x)")
    targets = check_targets(rows)
    for t in targets:
        print(f"{'PASS' if t['ok'] else 'MISS'}  {t['target']}: {t['value']:.4f}")
    data = {"args": vars(args), "base_config": base, "runs": rows, "targets": targets,
            "paillier_values_per_ciphertext": slots}
    out = write_json(args.json, "compression", data)
    print(f"JSON written to {out}")
    trained = [r for r in rows if args.quick or r["rounds"] >= args.rounds]  # bytes-only runs left out
    plot = pareto_plot(trained, Path(args.plot) if args.plot else RESULTS_DIR / "compression.png")
    print(f"plot written to {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What each defence really stops: every attack x protocol x DP setting on MovieLens 100K.

    python -m benchmarks.attacks --data-dir DIR [--quick] [--json F]
        [--attacks rated-items ...] [--protocols plaintext secagg+ paillier] [--dp none user]
        [--feedback implicit [--model implicit-mf|ncf]]

Each cell runs one attack (:mod:`attacks`) against ml-100k u1 with the given
protocol and differential privacy setting (``none``, or user-level DP-FedAvg
with epsilon 4 over the planned rounds) and prints the metric, the baseline
and whether the attack succeeded. The ratio column is value / baseline.

``--quick``: 8 factors, sample rate 0.2, Paillier with a 512-bit key (2048-bit
Paillier is far slower and changes nothing the attacker sees: the server gets
the same sum), poisoning with 10 rounds and without Paillier (its sum, hence
the outcome, is the SecAgg+ one up to quantization). Ten poisoning rounds
understate the attack: the fake clients' push accumulates (ml-100k, 5 % fake
clients, ER@10 with enforced clipping: 0.09 after 10 rounds, 0.72 after 30);
use ``--poison-rounds 30`` for the real picture.

Poisoning runs under each server in ``--poison-servers``: ``default`` (the
library's FedAdam) and ``hardened`` (``fedavg`` with server learning rate 2 and
``--server-decay 0.1``, the server half of the defence that holds under secure
aggregation, see :mod:`attacks.poisoning`); its table gives ER@10 and the test
RMSE of every defence, so the accuracy a defence costs is in the same row.

``--feedback implicit``: the same grid on implicit feedback (ml-100k binarized,
leave-one-out, ``--model implicit-mf`` by default or ``ncf``): rated-items must
tell the interacted items from the sampled negatives, poisoning is ER@10 and
its table shows HR@10 instead of RMSE; rating-reconstruction is explicit-MF
only and shows as n/a.

Targets (issue "Attack evaluation harness"): plaintext rated-items F1 >= 0.95;
rating reconstruction exact for >= 95 % of ratings; attribute-inference AUC
clearly above 0.5; under SecAgg+ / Paillier rated-items and attribute-inference
within 0.02 of their baselines; malicious-server reveals 0 secrets; poisoning:
ER@10 at 1 / 3 / 5 % fake clients, undefended and defended.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from attacks import ATTACKS, get_attack
from benchmarks._common import table, write_json
from securefedrec import ExperimentConfig
from securefedrec.data import load_dataset
from securefedrec.errors import SecureFedRecError

PROTOCOLS = ("plaintext", "secagg+", "paillier")
DP_SETTINGS = ("none", "user")
POISON_SERVERS: dict[str, dict[str, Any]] = {
    "default": {},
    "hardened": {"server_optimizer": "fedavg", "server_lr": 2.0, "server_decay": 0.1},
}
"""Server settings the poisoning cells run under (module docstring)."""


def _dp_available() -> bool:
    return "dp" in ExperimentConfig.field_names()


def base_config(args: argparse.Namespace, protocol: str, dp: str) -> ExperimentConfig:
    """The attacked configuration."""
    values: dict[str, Any] = dict(
        dataset="ml-100k", data_dir=str(args.data_dir), split=args.split, protocol=protocol,
        factors=8 if args.quick else 16, sample_rate=args.sample_rate, rounds=args.rounds,
        seed=args.seed, device="cpu", feedback=args.feedback, model=args.model,
    )
    if dp == "user":
        values.update(dp="user", epsilon=4.0, delta=1e-5, clip=args.clip)
    return ExperimentConfig(**values)


def run_cell(args: argparse.Namespace, attack: str, protocol: str, dp: str, data: Any,
             server: str = "default") -> dict[str, Any]:
    """One attack against one configuration; a row of the table."""
    row: dict[str, Any] = {"attack": attack, "protocol": protocol, "dp": dp, "server": server}
    if dp == "user" and not _dp_available():
        return {**row, "status": "n/a (no --dp in this build)"}
    if attack == "malicious-server" and dp == "user":
        return {**row, "status": "n/a (DP does not change the protocol messages)"}
    if attack == "rating-reconstruction" and args.feedback == "implicit":
        return {**row, "status": "n/a (explicit MF only: no ratings to reconstruct)"}
    if attack == "poisoning" and protocol == "paillier" and args.quick:
        return {**row, "status": "skipped in --quick (same sum as secagg+)"}
    cfg = base_config(args, protocol, dp)
    options: dict[str, Any] = {}
    if attack == "poisoning":
        cfg = cfg.replace(rounds=args.poison_rounds, **POISON_SERVERS[server])
    keys = {"key_bits": args.key_bits} if protocol == "paillier" else {}
    t0 = time.perf_counter()
    try:
        result = get_attack(attack, **options).run(cfg, dataset=data, aggregator_options=keys)
    except SecureFedRecError as exc:
        return {**row, "status": f"error: {exc}"}
    out = result.to_dict()
    out.pop("config")
    return {**row, **out, "dp": dp, "status": "ok", "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--split", help="default u1 (explicit), loo (implicit)")
    ap.add_argument("--feedback", default="explicit", choices=["explicit", "implicit"])
    ap.add_argument("--model", help="default mf (explicit), implicit-mf (implicit)")
    ap.add_argument("--quick", action="store_true", help="small runs (see the module docstring)")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--dp", nargs="+", default=list(DP_SETTINGS), choices=list(DP_SETTINGS))
    ap.add_argument("--rounds", type=int, default=30, help="planned rounds (DP calibration)")
    ap.add_argument("--poison-rounds", type=int, help="rounds of each poisoning run (default 10 quick, 30)")
    ap.add_argument("--poison-servers", nargs="+", default=list(POISON_SERVERS), choices=list(POISON_SERVERS),
                    help="server settings for the poisoning cells (module docstring)")
    ap.add_argument("--sample-rate", type=float, default=0.2)
    ap.add_argument("--clip", type=float, default=1.0, help="DP clip C")
    ap.add_argument("--key-bits", type=int, help="Paillier key (default 512 quick, 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.key_bits is None:
        args.key_bits = 512 if args.quick else 2048
    if args.poison_rounds is None:
        args.poison_rounds = 10 if args.quick else args.rounds
    implicit = args.feedback == "implicit"
    if args.split is None:
        args.split = "loo" if implicit else "u1"
    if args.model is None:
        args.model = "implicit-mf" if implicit else "mf"
    data = load_dataset("ml-100k", args.data_dir, args.split, args.seed, feedback=args.feedback)
    rows = []
    for attack in args.attacks:
        for protocol in args.protocols:
            for dp, server in [(d, s) for d in args.dp
                               for s in (args.poison_servers if attack == "poisoning" else ["default"])]:
                row = run_cell(args, attack, protocol, dp, data, server)
                rows.append(row)
                write_json(args.json, "attacks", {  # after every cell: a long grid keeps what it did
                    "args": {k: str(v) for k, v in vars(args).items()}, "dp_available": _dp_available(),
                    "rows": rows, "complete": False})
                shown = (f"{row['metric']} {row['value']:.4g} (baseline {row['baseline']:.4g}, "
                         f"success {row['success']}, {row['seconds']:.0f}s)" if row["status"] == "ok"
                         else row["status"])
                label = f"{attack}[{server}]" if attack == "poisoning" else attack
                print(f"{label:22s} {protocol:9s} dp={dp:4s} {shown}", flush=True)
    headers = ["attack", "protocol", "dp", "metric", "value", "baseline", "ratio", "success"]
    body = []
    for r in rows:
        name = f"{r['attack']}[{r['server']}]" if r["attack"] == "poisoning" else r["attack"]
        if r["status"] != "ok":
            body.append([name, r["protocol"], r["dp"], "-", "-", "-", "-", r["status"].split(" (")[0]])
            continue
        ratio = r["value"] / r["baseline"] if r["baseline"] else float("inf")
        body.append([name, r["protocol"], r["dp"], r["metric"], r["value"], r["baseline"], ratio,
                     r["success"]])
    print()
    print(table(headers, body))
    poison = [r for r in rows if r["attack"] == "poisoning" and r["status"] == "ok"]
    if poison:
        utility = "hr@10" if implicit else "rmse"
        print("\npoisoning ER@10 by defence and fake-client fraction (fraction 0 = defence alone), "
              f"and the test {utility.upper()} at the largest fraction:")
        prow = []
        for r in poison:
            for defence, by_f in r["details"]["table"].items():
                fr = sorted(by_f, key=float)
                prow.append([r["protocol"], r["dp"], r["server"], defence, *[by_f[f]["er@10"] for f in fr],
                             by_f[fr[-1]][utility]])
        fracs = sorted(poison[0]["details"]["table"]["none"], key=float)
        print(table(["protocol", "dp", "server", "defence", *fracs, utility.upper()], prow))
    path = write_json(args.json, "attacks", {
        "args": {k: str(v) for k, v in vars(args).items()}, "dp_available": _dp_available(), "rows": rows,
        "complete": True})
    print(f"\nJSON written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

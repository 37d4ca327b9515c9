"""SecAgg / SecAgg+ (ours) vs Flower's ``SecAggPlusWorkflow``, in process, same machine, same run.

    python -m benchmarks.secure_aggregation --clients 100 --length 28594 --neighbors 15 --json F
    python -m benchmarks.secure_aggregation --quick

Measured:

1. head to head at N, L, K and per-stage dropout P: one round of ours (semi-honest,
   Flower's threat model, K neighbours) and one round of Flower 1.42's real
   ``SecAggPlusWorkflow`` + ``secaggplus_mod``. Flower is driven in process by a
   fake ``Grid`` that hands each message to the client mod after a protobuf
   round trip (``message_to_proto`` / ``message_from_proto``, as on the wire; the
   copy is needed because Flower's workflow shares one content object between
   messages). Flower's seconds are reported with and without that transport
   time; the ratio uses the time *without* it (conservative). Flower needs an odd
   ``num_shares`` (neighbours + the client itself), so for an odd K both run the
   same graph of K - 1 neighbours (Flower ``num_shares=K``); ours with K neighbours is
   reported too. Runs are interleaved and the best of ``--repeat`` is kept (the
   machine may be shared). Both answers are checked against the float sum.
2. our cost per round, semi-honest and malicious (signatures + consistency round),
   for n in ``--sizes`` at L = ``--cost-length``, no dropout.
3. dropout: 10% at every stage (``sample_dropouts``; ~41% gone by the unmask
   stage), semi-honest, threshold n/4, ``--dropout-neighbors`` neighbours: ours must
   return the exact survivors' sum, at the head-to-head N, L (Flower runs the same
   plan, and separately one client vanishing during key sharing) and in a big
   round (``--dropout-clients``, ``--dropout-length``; default n=1000, L=100,000).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np

from benchmarks._common import table, write_json
from protocols import AggregationAborted, FixedPoint, RoundConfig, Stage, sample_dropouts
from protocols.secagg import SecAggAggregator

FLOWER_STAGES = {Stage.ADVERTISE: 0, Stage.SHARE_KEYS: 1, Stage.MASKED_INPUT: 2, Stage.CONSISTENCY: 3,
                 Stage.UNMASK: 3}
"""Our stages -> Flower's (setup, share keys, collect masked vectors, unmask)."""


def make_inputs(n: int, length: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i + 1: rng.uniform(-1.0, 1.0, length) for i in range(n)}


def senders(inputs: dict[int, np.ndarray], plan: dict[int, Stage]) -> list[int]:
    return sorted(c for c in inputs if c not in plan or plan[c] > Stage.MASKED_INPUT)


def run_ours(
    inputs: dict[int, np.ndarray], neighbors: int, plan: dict[int, Stage], *, malicious: bool,
    threshold: int, ring_bits: int = 32, workers: int = 1,
) -> dict[str, Any]:
    n = len(inputs)
    cfg = RoundConfig(threshold=threshold, ring_bits=ring_bits, clip_range=1.0)
    agg = SecAggAggregator(neighbors=neighbors, malicious=malicious, rng=np.random.default_rng(0),
                           workers=workers)
    t0 = time.perf_counter()
    try:
        res = agg.aggregate(inputs, cfg, plan)
    except AggregationAborted as exc:
        return {"seconds": time.perf_counter() - t0, "completed": False, "correct": False, "error": str(exc)}
    seconds = time.perf_counter() - t0
    want = np.sum([inputs[c] for c in senders(inputs, plan)], axis=0)
    err = float(np.abs(res.total - want).max())
    step = FixedPoint.for_sum(n, 1.0, ring_bits).step
    server = agg.last_server
    return {
        "seconds": seconds, "seconds_clients": res.seconds_clients, "seconds_server": res.seconds_server,
        "completed": True, "correct": res.survivors == frozenset(senders(inputs, plan)) and err <= n * step,
        "max_abs_error": err, "survivors": len(res.survivors), "bytes_up": res.total_bytes_up,
        "bytes_down": res.total_bytes_down, "degree": server.degree if server else None,
        "share_threshold": server.share_threshold if server else None,
    }


# ---- Flower, driven in process -------------------------------------------------------------
def _flower() -> Any:
    """Import Flower lazily; return a namespace of what the driver needs (or raise ImportError)."""
    import types

    from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
    from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    # Message() outside a running SuperLink/ServerApp needs a task identity
    TaskIdentity.run_id = 0
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0
    return types.SimpleNamespace(
        ConfigRecord=ConfigRecord, Context=Context, Error=Error, Message=Message, RecordDict=RecordDict,
        secaggplus_mod=secaggplus_mod, Code=Code, FitRes=FitRes, Status=Status,
        ndarrays_to_parameters=ndarrays_to_parameters, parameters_to_ndarrays=parameters_to_ndarrays,
        message_from_proto=message_from_proto, message_to_proto=message_to_proto, compat=compat,
        SimpleClientManager=SimpleClientManager, GridClientProxy=GridClientProxy, LegacyContext=LegacyContext,
        FedAvg=FedAvg, MAIN_CONFIGS_RECORD=MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD=MAIN_PARAMS_RECORD,
        WorkflowKey=WorkflowKey, SecAggPlusWorkflow=SecAggPlusWorkflow,
    )


class _FakeGrid:
    """Flower ``Grid`` stand-in: send_and_receive hands each message to the client's secaggplus_mod."""

    def __init__(self, fl: Any, vectors: dict[int, np.ndarray], drop_at: dict[int, int]) -> None:
        self.fl, self.vectors, self.drop_at = fl, vectors, drop_at
        self.calls = 0
        self.contexts = {
            nid: fl.Context(run_id=0, node_id=nid, node_config={}, state=fl.RecordDict(), run_config={})
            for nid in vectors
        }
        self.seconds_clients = 0.0
        self.seconds_transport = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.client_errors: list[str] = []

    def _fit(self, msg: Any, ctxt: Any, nid: int) -> Any:
        fl = self.fl
        res = fl.FitRes(status=fl.Status(fl.Code.OK, ""), num_examples=1, metrics={},
                        parameters=fl.ndarrays_to_parameters([self.vectors[nid]]))
        return fl.Message(fl.compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        fl = self.fl
        stage = self.calls
        self.calls += 1
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            if self.drop_at.get(nid, 99) <= stage:
                continue  # dropped: never answers
            t0 = time.perf_counter()
            proto = fl.message_to_proto(msg)
            self.bytes_down += proto.ByteSize()
            msg = fl.message_from_proto(proto)
            t1 = time.perf_counter()
            try:
                reply = fl.secaggplus_mod(msg, self.contexts[nid], lambda m, c, nid=nid: self._fit(m, c, nid))
            except Exception as exc:  # a ClientApp turns exceptions into error replies
                self.client_errors.append(f"{type(exc).__name__}: {exc}")
                reply = fl.Message(fl.Error(code=0, reason=str(exc)), reply_to=msg)
            t2 = time.perf_counter()
            proto = fl.message_to_proto(reply)
            self.bytes_up += proto.ByteSize()
            replies.append(fl.message_from_proto(proto))
            self.seconds_clients += t2 - t1
            self.seconds_transport += (t1 - t0) + (time.perf_counter() - t2)
        return replies


def run_flower(inputs: dict[int, np.ndarray], num_shares: int, plan: dict[int, Stage]) -> dict[str, Any]:
    """One SecAggPlusWorkflow round (``num_shares`` odd: neighbours + itself).

    Flower returns the weighted mean; with weight 1 per client the sum is mean * survivors.
    """
    fl = _flower()
    n, length = len(inputs), len(next(iter(inputs.values())))
    grid = _FakeGrid(fl, inputs, {c: FLOWER_STAGES[s] for c, s in plan.items()})
    manager = fl.SimpleClientManager()
    for nid in inputs:
        manager.register(fl.GridClientProxy(nid, grid, 0))
    outcome: dict[str, Any] = {}

    class Recording(fl.FedAvg):  # type: ignore[misc,name-defined]
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            outcome["results"] = len(results)
            return super().aggregate_fit(server_round, results, failures)

    strategy = Recording(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n)
    ctx = fl.LegacyContext(
        fl.Context(run_id=0, node_id=0, node_config={}, state=fl.RecordDict(), run_config={}),
        strategy=strategy, client_manager=manager,
    )
    ctx.state.config_records[fl.MAIN_CONFIGS_RECORD] = fl.ConfigRecord({fl.WorkflowKey.CURRENT_ROUND: 1})
    ctx.state.array_records[fl.MAIN_PARAMS_RECORD] = fl.compat.parameters_to_arrayrecord(
        fl.ndarrays_to_parameters([np.zeros(length)]), True
    )
    workflow = fl.SecAggPlusWorkflow(
        num_shares=num_shares, reconstruction_threshold=num_shares // 2 + 1, clipping_range=1.0
    )
    t0 = time.perf_counter()
    workflow(grid, ctx)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "seconds_with_transport": seconds, "seconds": seconds - grid.seconds_transport,
        "seconds_clients": grid.seconds_clients, "completed": "results" in outcome,
        "bytes_up": grid.bytes_up, "bytes_down": grid.bytes_down, "num_shares": num_shares,
        "client_errors": grid.client_errors[:3],
    }
    if "results" not in outcome:
        out.update(correct=False, halted=True)
        return out
    record = ctx.state.array_records[fl.MAIN_PARAMS_RECORD]
    params = fl.compat.arrayrecord_to_parameters(record, keep_input=True)
    mean = fl.parameters_to_ndarrays(params)[0]
    who = senders(inputs, plan)
    want = np.sum([inputs[c] for c in who], axis=0)
    err = float(np.abs(mean * outcome["results"] - want).max())
    out.update(halted=False, max_abs_error=err, survivors=outcome["results"],
               correct=outcome["results"] == len(who) and err <= 1e-3 * n)
    return out


# ---- the benchmark -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--length", type=int, default=28_594)
    parser.add_argument("--neighbors", type=int, default=15)
    parser.add_argument("--dropout", type=float, default=0.0, help="per-stage dropout of the head to head")
    parser.add_argument("--sizes", type=str, default="100,500,1000", help="n for our cost table")
    parser.add_argument("--cost-length", type=int, default=100_000)
    parser.add_argument("--dropout-clients", type=int, default=1000, help="n of the big dropout round")
    parser.add_argument("--dropout-length", type=int, default=100_000, help="L of the big dropout round")
    parser.add_argument("--dropout-neighbors", type=int, default=40, help="k of the dropout rounds (even)")
    parser.add_argument("--repeat", type=int, default=2, help="head to head: best of R runs each")
    parser.add_argument("--workers", type=int, default=1,
                        help="simulate our clients in this many forked processes (default 1: one process)")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower (e.g. not installed)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--json", type=str, default=None,
                        help="output (default results/secure_aggregation.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.length, args.sizes, args.cost_length = 30, 2_000, "20,50", 10_000
        args.dropout_clients, args.dropout_length, args.dropout_neighbors = 60, 10_000, 30
    n, length, k = args.clients, args.length, args.neighbors
    threshold = max(2, n // 2)
    out: dict[str, Any] = {"args": vars(args)}

    # 1. head to head
    plan = sample_dropouts(range(1, n + 1), args.dropout, np.random.default_rng(1)) if args.dropout else {}
    # Flower's graph: num_shares (odd) = neighbours + the client itself. Same graph for both:
    shares = min(k if k % 2 else k + 1, n)
    same_k = shares - 1
    # runs interleaved (ours, ours at K, Flower) so a shared machine's load hits all alike; best of --repeat
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "ours_k": [], "flower": []}
    flower_ok = not args.no_flower
    for _ in range(args.repeat):
        runs["ours"].append(run_ours(make_inputs(n, length), same_k, plan, malicious=False,
                                     threshold=threshold, workers=args.workers))
        if same_k != k:
            runs["ours_k"].append(run_ours(make_inputs(n, length), k, plan, malicious=False,
                                           threshold=threshold, workers=args.workers))
        if flower_ok:
            try:
                runs["flower"].append(run_flower(make_inputs(n, length), shares, plan))
            except ImportError as exc:
                print(f"Flower not available ({exc}); skipping the comparison")
                flower_ok = False

    def best(key: str) -> dict[str, Any] | None:
        if not runs[key]:
            return None
        pick = min(runs[key], key=lambda r: r["seconds"])
        return {**pick, "all_seconds": [r["seconds"] for r in runs[key]]}

    ours, ours_k, flower = best("ours"), best("ours_k"), best("flower")
    if ours is None:
        raise RuntimeError("no run of ours was recorded")
    out["head_to_head"] = {
        "flower_num_shares": shares, "neighbors_same_graph": same_k, "ours": ours, "ours_at_k": ours_k,
        "flower": flower, "speedup": (flower["seconds"] / ours["seconds"]) if flower else None,
        "speedup_ours_at_k": (flower["seconds"] / ours_k["seconds"]) if flower and ours_k else None,
    }
    rows = [[f"ours, semi-honest, {same_k} neighbours", ours["seconds"], ours["bytes_up"], ours["correct"]]]
    if ours_k:
        rows.append([f"ours, semi-honest, {k} neighbours", ours_k["seconds"], ours_k["bytes_up"],
                     ours_k["correct"]])
    if flower:
        rows.append([f"Flower SecAggPlusWorkflow, num_shares={shares} ({shares - 1} neighbours)",
                     flower["seconds"], flower["bytes_up"], flower["correct"]])
        rows.append(["Flower incl. protobuf transport", flower["seconds_with_transport"], flower["bytes_up"],
                     flower["correct"]])
    print(f"\n1. one round: n={n}, L={length}, K={k}, dropout per stage={args.dropout}, "
          f"best of {args.repeat} interleaved runs")
    print(table(["protocol", "seconds", "bytes up", "right sum"], rows))
    if flower:
        speedup = out["head_to_head"]["speedup"]
        print(f"speed-up, same graph (Flower without transport / ours): {speedup:.1f}x")
        if ours_k:
            print(f"speed-up, ours with K={k} neighbours: {out['head_to_head']['speedup_ours_at_k']:.1f}x")

    # 2. our cost
    cost_rows, cost = [], []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        inputs = make_inputs(size, args.cost_length, seed=size)
        for malicious in (False, True):
            r = run_ours(inputs, k, {}, malicious=malicious, threshold=max(2, size // 2),
                         workers=args.workers)
            r.update(clients=size, length=args.cost_length, malicious=malicious)
            cost.append(r)
            model = "malicious" if malicious else "semi-honest"
            cost_rows.append([size, args.cost_length, r["degree"], model, r["seconds"],
                              r["seconds_clients"], r["seconds_server"],
                              r["bytes_up"] / size, r["correct"]])
    out["cost"] = cost
    print(f"\n2. our cost per round (neighbours={k}, no dropout)")
    print(table(["n", "L", "k", "model", "seconds", "clients s (sum)", "server s", "bytes up/client",
                 "right sum"], cost_rows))

    # 3. dropout: 10% at every stage (about 41% of the clients are gone by the unmask stage)
    p, kd = 0.1, args.dropout_neighbors
    drop_rows = []
    out["dropout"] = {}
    for size, dlength in ((n, length), (args.dropout_clients, args.dropout_length)):
        plan = sample_dropouts(range(1, size + 1), p, np.random.default_rng(2))
        inputs = make_inputs(size, dlength, seed=3)
        thr = max(2, size // 4)
        ours_drop = run_ours(inputs, kd, plan, malicious=False, threshold=thr, workers=args.workers)
        ours_drop.update(clients=size, length=dlength, threshold=thr, dropped=len(plan))
        out["dropout"][f"ours_n{size}_L{dlength}"] = ours_drop
        drop_rows.append([f"ours, n={size}, L={dlength}, 10% per stage", len(plan), ours_drop["seconds"],
                          ours_drop["completed"], ours_drop["correct"]])
        if flower is None or size != n:
            continue
        fl_drop = run_flower(inputs, min(kd + 1, size), plan)
        one = {next(iter(sorted(inputs))): Stage.SHARE_KEYS}
        fl_one = run_flower(inputs, min(kd + 1, size), one)
        ours_one = run_ours(inputs, kd, one, malicious=False, threshold=thr)
        out["dropout"].update(flower=fl_drop, flower_one_drop_at_share_keys=fl_one,
                              ours_one_drop_at_share_keys=ours_one)
        drop_rows.append([f"Flower, n={size}, L={dlength}, 10% per stage", len(plan), fl_drop["seconds"],
                          fl_drop["completed"], fl_drop["correct"]])
        drop_rows.append(["ours, 1 client drops at share keys", 1, ours_one["seconds"],
                          ours_one["completed"], ours_one["correct"]])
        drop_rows.append(["Flower, 1 client drops at share keys", 1, fl_one["seconds"], fl_one["completed"],
                          fl_one["correct"]])
    print(f"\n3. dropouts (neighbours={kd}, semi-honest, threshold n/4; Flower num_shares={kd + 1})")
    print(table(["run", "clients dropped", "seconds", "completed", "right sum"], drop_rows))
    fl_one = out["dropout"].get("flower_one_drop_at_share_keys")
    if fl_one and fl_one["client_errors"]:
        print("Flower's clients fail with:", fl_one["client_errors"][0], "-> the workflow halts")

    path = write_json(args.json, "secure_aggregation", out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

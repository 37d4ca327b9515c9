"""Packed Paillier (ours) vs phe's one-value-per-ciphertext ``EncryptedNumber`` (FedMF's design).

    python -m benchmarks.paillier --key-bits 2048 --values 20000 --clients 10 --json results/paillier.json
    python -m benchmarks.paillier --quick

Measured in one run at one key size:

- encrypt / add / decrypt throughput (values per second) of both schemes.
  phe is timed on a subset (``--phe-values``, default 200) and its per-value
  rate extrapolated; the output says so.
- end-to-end: N clients encrypt V values each (randomness generation counted),
  the server sums, one key holder decrypts; and *online*, the same with each
  client's randomness pool filled beforehand.
- ciphertext bytes per value on the wire (phe: one 2*key_bits-bit ciphertext per value;
  ours: the real framed message of one client divided by V).
- one full round of :class:`~protocols.paillier.PaillierAggregator` with 100 clients at
  L = 28,594 (``--round-clients``, ``--round-length``), including key distribution.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np

from benchmarks._common import table, write_json
from protocols import RoundConfig
from protocols.encoding import FixedPoint
from protocols.paillier import PaillierAggregator, RandomnessPool, SlotLayout, fill_pools, generate_keypair
from protocols.paillier.packing import pack_offset, unpack_sum
from protocols.paillier.raw import PrivateKey, encrypt_with_obfuscator, raw_decrypt


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the randomness workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _ours(key: PrivateKey, values: int, clients: int, value_bits: int, workers: int) -> dict[str, Any]:
    """Time our packed scheme: N clients x V values, cold (randomness counted) and online (pool filled)."""
    rng = np.random.default_rng(0)
    fp = FixedPoint(clip_range=1.0, value_bits=value_bits, ring_bits=64)
    layout = SlotLayout.for_sum(clients, value_bits, key.public.plaintext_bits)
    xs = [rng.uniform(-1, 1, values) for _ in range(clients)]
    nsq = key.public.nsquare
    out: dict[str, Any] = {"slots_per_ciphertext": layout.slots, "slot_bits": layout.slot_bits}

    def encrypt_all(pools: list[RandomnessPool], fill: bool) -> tuple[list[list[Any]], float, float]:
        t_enc = 0.0
        t0 = time.perf_counter()
        if fill:  # every client's randomness for this update, spread over the workers
            fill_pools([(pool, layout.ciphertexts_for(values)) for pool in pools], workers=workers)
        t_fill = time.perf_counter() - t0
        cts = []
        for x, pool in zip(xs, pools, strict=True):
            t1 = time.perf_counter()
            ms = pack_offset(layout, fp.quantize(x, rng))
            rns = pool.take(len(ms))
            cts.append([encrypt_with_obfuscator(key.public, m, r) for m, r in zip(ms, rns, strict=True)])
            t_enc += time.perf_counter() - t1
        return cts, t_fill, t_enc

    def add_and_decrypt(cts: list[list[Any]]) -> tuple[float, float, np.ndarray]:
        t0 = time.perf_counter()
        acc = list(cts[0])
        for c in cts[1:]:
            acc = [a * b % nsq for a, b in zip(acc, c, strict=True)]
        t1 = time.perf_counter()
        total = unpack_sum(layout, [int(raw_decrypt(key, c)) for c in acc], values, clients)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, total.astype(np.float64) * fp.step

    pools = [RandomnessPool(key.public, private=key) for _ in range(clients)]
    cts, t_fill, t_enc = encrypt_all(pools, fill=True)
    t_add, t_dec, total = add_and_decrypt(cts)
    err = float(np.max(np.abs(total - np.sum(xs, axis=0))))
    # online: pools filled before the clock starts
    pools = [RandomnessPool(key.public, private=key) for _ in range(clients)]
    t0 = time.perf_counter()
    fill_pools([(pool, layout.ciphertexts_for(values)) for pool in pools], workers=workers)
    t_prefill = time.perf_counter() - t0
    cts, _, t_enc_online = encrypt_all(pools, fill=False)
    t_add2, t_dec2, _ = add_and_decrypt(cts)
    message_bytes = 9 + 20 + len(cts[0]) * key.public.ciphertext_bytes  # header + ids/count + ciphertexts
    out.update(
        encrypt_values_per_s=clients * values / (t_fill + t_enc),
        encrypt_online_values_per_s=clients * values / t_enc_online,
        add_values_per_s=(clients - 1) * values / t_add,
        decrypt_values_per_s=values / t_dec,
        end_to_end_s=t_fill + t_enc + t_add + t_dec,
        online_s=t_enc_online + t_add2 + t_dec2,
        offline_prefill_s=t_prefill,
        randomness_s=t_fill,
        max_abs_error=err,
        quantization_step=fp.step,
        bytes_per_value=message_bytes / values,
    )
    out["end_to_end_values_per_s"] = clients * values / out["end_to_end_s"]
    out["online_values_per_s"] = clients * values / out["online_s"]
    return out


def _phe(key: PrivateKey, subset: int, clients: int, values: int) -> dict[str, Any]:
    """Time phe per value on ``subset`` values; extrapolate N clients x V values."""
    from phe import paillier

    pub = paillier.PaillierPublicKey(int(key.public.n))
    priv = paillier.PaillierPrivateKey(pub, int(key.p), int(key.q))
    rng = np.random.default_rng(1)
    xs = [float(v) for v in rng.uniform(-1, 1, subset)]
    ys = [float(v) for v in rng.uniform(-1, 1, subset)]
    t0 = time.perf_counter()
    ex = [pub.encrypt(x) for x in xs]
    ey = [pub.encrypt(y) for y in ys]
    t2 = time.perf_counter()
    es = [a + b for a, b in zip(ex, ey, strict=True)]
    t3 = time.perf_counter()
    sums = [priv.decrypt(e) for e in es]
    t4 = time.perf_counter()
    err = max(abs(s - (x + y)) for s, x, y in zip(sums, xs, ys, strict=True))
    enc, add, dec = (t2 - t0) / (2 * subset), (t3 - t2) / subset, (t4 - t3) / subset
    e2e = clients * values * enc + (clients - 1) * values * add + values * dec
    online = clients * values * enc + (clients - 1) * values * add + values * dec  # phe has no offline part
    return {
        "timed_values": subset,
        "extrapolated": True,
        "encrypt_values_per_s": 1 / enc,
        "add_values_per_s": 1 / add,
        "decrypt_values_per_s": 1 / dec,
        "end_to_end_s_extrapolated": e2e,
        "end_to_end_values_per_s": clients * values / e2e,
        "online_values_per_s": clients * values / online,
        "bytes_per_value": 2 * key.public.bits / 8,
        "max_abs_error": err,
    }


def _round(key: PrivateKey, clients: int, length: int, value_bits: int, workers: int) -> dict[str, Any]:
    """One PaillierAggregator round (key distribution, offline randomness, encryption, sum, decryption)."""
    rng = np.random.default_rng(2)
    inputs = {cid: rng.uniform(-1, 1, length) for cid in range(clients)}
    cfg = RoundConfig(clip_range=1.0, ring_bits=32, value_bits=value_bits, threshold=max(1, clients // 2))
    agg = PaillierAggregator(keypair=key, workers=workers, rng=np.random.default_rng(3))
    c0, t0 = _cpu_seconds(), time.perf_counter()
    result = agg.aggregate(inputs, cfg)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    err = float(np.max(np.abs(result.total - np.sum(list(inputs.values()), axis=0))))
    return {
        "clients": clients,
        "length": length,
        "value_bits": value_bits,
        "workers": workers,
        "wall_s": wall,
        "cpu_s": cpu,
        "ciphertexts_per_client": -(
            -length // SlotLayout.for_sum(clients, value_bits, key.public.plaintext_bits).slots
        ),
        "offline_s": result.offline_seconds,
        "online_s": result.seconds_clients + result.seconds_server,
        "seconds_clients": result.seconds_clients,
        "seconds_server": result.seconds_server,
        "bytes_up_per_client": result.total_bytes_up / clients,
        "bytes_down_per_client": result.total_bytes_down / clients,
        "max_abs_error": err,
        "tolerance": clients * FixedPoint(1.0, value_bits, 32).step,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--values", type=int, default=20000, help="values per client (V)")
    ap.add_argument("--clients", type=int, default=10, help="clients in the end-to-end sum (N)")
    ap.add_argument("--value-bits", type=int, default=16)
    ap.add_argument("--phe-values", type=int, default=200, help="values phe is timed on (then extrapolated)")
    ap.add_argument("--workers", type=int, default=2, help="processes for randomness in the round")
    ap.add_argument("--round-clients", type=int, default=100)
    ap.add_argument("--round-length", type=int, default=28594)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--json", default=None, help="output file (default results/paillier.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.values, args.phe_values = min(args.values, 2000), min(args.phe_values, 20)
        args.round_clients, args.round_length = min(args.round_clients, 10), min(args.round_length, 2000)

    t0 = time.perf_counter()
    key = generate_keypair(args.key_bits)
    keygen_s = time.perf_counter() - t0
    ours1 = _ours(key, args.values, args.clients, args.value_bits, workers=1)
    ours2 = (
        _ours(key, args.values, args.clients, args.value_bits, workers=args.workers)
        if args.workers > 1
        else None
    )
    phe = _phe(key, args.phe_values, args.clients, args.values)
    rnd = _round(key, args.round_clients, args.round_length, args.value_bits, args.workers)

    def ratio(a: float, b: float) -> float:
        return a / b

    rows = [
        [
            "encrypt (randomness counted)",
            phe["encrypt_values_per_s"],
            ours1["encrypt_values_per_s"],
            ratio(ours1["encrypt_values_per_s"], phe["encrypt_values_per_s"]),
        ],
        [
            "encrypt (pool filled)",
            phe["encrypt_values_per_s"],
            ours1["encrypt_online_values_per_s"],
            ratio(ours1["encrypt_online_values_per_s"], phe["encrypt_values_per_s"]),
        ],
        [
            "add",
            phe["add_values_per_s"],
            ours1["add_values_per_s"],
            ratio(ours1["add_values_per_s"], phe["add_values_per_s"]),
        ],
        [
            "decrypt",
            phe["decrypt_values_per_s"],
            ours1["decrypt_values_per_s"],
            ratio(ours1["decrypt_values_per_s"], phe["decrypt_values_per_s"]),
        ],
        [
            f"end-to-end N={args.clients}",
            phe["end_to_end_values_per_s"],
            ours1["end_to_end_values_per_s"],
            ratio(ours1["end_to_end_values_per_s"], phe["end_to_end_values_per_s"]),
        ],
        [
            f"online N={args.clients}",
            phe["online_values_per_s"],
            ours1["online_values_per_s"],
            ratio(ours1["online_values_per_s"], phe["online_values_per_s"]),
        ],
    ]
    if ours2 is not None:
        rows.append(
            [
                f"end-to-end N={args.clients}, {args.workers} workers",
                phe["end_to_end_values_per_s"],
                ours2["end_to_end_values_per_s"],
                ratio(ours2["end_to_end_values_per_s"], phe["end_to_end_values_per_s"]),
            ]
        )
    rows.append(
        [
            "ciphertext bytes per value",
            phe["bytes_per_value"],
            ours1["bytes_per_value"],
            ratio(ours1["bytes_per_value"], phe["bytes_per_value"]),
        ]
    )
    print(
        f"Paillier, {args.key_bits}-bit key (keygen {keygen_s:.2f} s), V={args.values} values, "
        f"N={args.clients} clients, {args.value_bits}-bit values, {ours1['slots_per_ciphertext']} values "
        f"per ciphertext ({ours1['slot_bits']}-bit slots); 1 process unless stated"
    )
    print(
        f"phe timed on {phe['timed_values']} values per operation; its per-value rates are extrapolated to V."
    )
    print(table(["values/s", "phe (per value)", "ours (packed)", "ours / phe"], rows))
    print()
    print(
        f"round: {rnd['clients']} clients, L={rnd['length']}, {rnd['workers']} workers: "
        f"wall {rnd['wall_s']:.1f} s = offline {rnd['offline_s']:.1f} s (randomness) + online "
        f"{rnd['online_s']:.1f} s (clients {rnd['seconds_clients']:.1f} s, "
        f"server {rnd['seconds_server']:.2f} s); "
        f"{rnd['cpu_s']:.1f} CPU s; {rnd['bytes_up_per_client'] / 1e3:.0f} kB up per client; "
        f"max error {rnd['max_abs_error']:.2e} "
        f"(bound {rnd['tolerance']:.2e})"
    )
    data = {
        "args": vars(args),
        "keygen_s": keygen_s,
        "ours": ours1,
        "ours_workers": ours2,
        "phe": phe,
        "round": rnd,
        "ratios": {str(r[0]): r[3] for r in rows},
    }
    path = write_json(args.json, "paillier", data)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

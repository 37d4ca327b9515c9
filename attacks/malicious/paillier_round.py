"""One packed-Paillier round whose server messages the attacker rewrites (:mod:`attacks.malicious.paillier`).

:class:`PaillierRound` holds honest :class:`~protocols.paillier.PaillierClient` objects built from
their own configuration (or, for the baseline, from the caller's), the
:class:`~protocols.paillier.PaillierServer` the attacker controls, and the helpers the
scenarios share: encrypting, decrypting, running the consistency round and scoring a
recovered input against the truth.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attacks.malicious.outcomes import ScenarioOutcome
from protocols import ProtocolError, RoundConfig
from protocols.paillier import PaillierClient, PaillierServer, PrivateKey, RandomnessPool
from protocols.paillier import messages as pm
from protocols.paillier.aggregator import (
    Ciphertexts,
    consistency_threshold,
    decode_ciphertexts,
    encode_verified_aggregate,
    round_layout,
)
from protocols.paillier.packing import unpack_sum
from protocols.paillier.raw import encrypt_with_obfuscator, obfuscator, raw_decrypt
from protocols.wire import frame, unframe
from securefedrec.errors import ConfigError

__all__ = ["PaillierRound"]


class PaillierRound:
    """One packed-Paillier round whose server messages the attacker may rewrite."""

    def __init__(self, n: int, threshold: int, malicious: bool, key: PrivateKey, length: int,
                 rng: np.random.Generator, randbytes: Callable[[int], bytes], *, round_id: int = 7,
                 identities: Mapping[int, Ed25519PrivateKey] | None = None, own_config: bool = True) -> None:
        self.ids = list(range(1, n + 1))
        self.cfg = RoundConfig(round_id=round_id, threshold=threshold, ring_bits=32, clip_range=1.0)
        self.rid = round_id
        self.inputs = {c: rng.uniform(-1, 1, length) for c in self.ids}
        self.identities = dict(identities) if identities is not None else {
            c: Ed25519PrivateKey.from_private_bytes(randbytes(32)) for c in self.ids}
        self.directory = {c: k.public_key() for c, k in self.identities.items()}
        self.key = key
        self.public = key.public
        self.width = key.public.ciphertext_bytes
        self.length = length
        self.malicious = malicious
        self.randbytes = randbytes
        self.t_prime = consistency_threshold(n)
        self.fp, self.layout = round_layout(n, self.cfg, key.public)
        self.server = PaillierServer(self.directory, self.cfg, n, malicious=malicious)
        self.holder = self.ids[0]
        self.own_config = own_config
        self.clients = {c: self.client(c) for c in self.ids}
        self.adverts: dict[int, bytes] = {}
        self.ciphertexts: dict[int, bytes] = {}

    def client(self, cid: int, **overrides: Any) -> PaillierClient:
        """An honest client; with ``own_config`` it holds the round's parameters as its own."""
        options: dict[str, Any] = {"malicious": self.malicious, "n_clients": len(self.ids),
                                   "randbytes": self.randbytes}
        if self.own_config:
            options |= {"config": self.cfg, "min_key_bits": self.key.public.bits,
                        "key_holders": {self.holder}}
        return PaillierClient(cid, self.identities[cid], self.directory, self.rid, **(options | overrides))

    # ---- delivering messages to honest clients ------------------------------------------------
    def call(self, cid: int, method: str, out: ScenarioOutcome, *args: Any) -> Any:
        """Deliver to client ``cid``; an honest client that detects a deviation aborts (kept in ``out``)."""
        try:
            return getattr(self.clients[cid], method)(*args)
        except ProtocolError as exc:
            out.aborted.append(cid)
            out.errors.append(f"{type(exc).__name__}: {exc}")
            return None

    def advertise(self) -> bytes:
        """ADVERTISE: every client's signed advert; return the server's honest relay."""
        self.adverts = {c: self.clients[c].advertise() for c in self.ids}
        return self.server.collect_adverts(self.adverts)

    def share(self, out: ScenarioOutcome) -> dict[int, bytes]:
        """SHARE_KEYS up to the relayed deliveries (honest): recipient -> its delivery."""
        listing = self.advertise()
        for c in self.ids:
            self.call(c, "receive_adverts", out, listing)
        return self.server.relay_key(self.holder, self.clients[self.holder].share_key(self.key))

    def honest_until_masked(self, out: ScenarioOutcome) -> None:
        """Every honest stage up to MASKED_INPUT; the server keeps each client's ciphertexts."""
        deliveries = self.share(out)
        acks = {c: self.call(c, "receive_key", out, m) for c, m in deliveries.items()}
        self.server.collect_acks({c: a for c, a in acks.items() if a is not None})
        for c in self.ids:
            self.ciphertexts[c] = self.encrypt(c)
        self.server.collect_ciphertexts(self.ciphertexts)

    def encrypt(self, cid: int) -> bytes:
        """Client ``cid``'s MASKED_INPUT message (it must hold a key)."""
        client = self.clients[cid]
        keypair = client.keypair
        if keypair is None:
            raise ConfigError(f"client {cid} holds no key")
        fp, layout = round_layout(len(self.ids), self.cfg, keypair.public)
        rng = np.random.default_rng([cid, self.rid])
        pool = RandomnessPool(keypair.public)
        message: bytes = client.masked_input(self.inputs[cid], fp, layout, rng, pool)
        return message

    def read_with(self, cid: int, key: PrivateKey, out: ScenarioOutcome, how: str) -> None:
        """Client ``cid`` encrypts under the key it accepted; the server decrypts with ``key``."""
        message = decode_ciphertexts(self.encrypt(cid))
        plain = [int(raw_decrypt(key, v)) for v in message.values(key.public.ciphertext_bytes)]
        fp, layout = round_layout(len(self.ids), self.cfg, key.public)
        values = unpack_sum(layout, plain, self.length, 1).astype(np.float64) * fp.step
        self.score(cid, values, self.inputs[cid], out, how)

    # ---- the attacker's tools -----------------------------------------------------------------
    def cts(self, cid: int, messages: Mapping[int, bytes] | None = None) -> Ciphertexts:
        """Client ``cid``'s decoded ciphertexts (this round's unless ``messages`` says otherwise)."""
        return decode_ciphertexts((messages or self.ciphertexts)[cid])

    def zeros(self, count: int) -> list[int]:
        """``count`` fresh encryptions of 0 under the round key (anyone can make them)."""
        n = int(self.public.n)
        out = []
        for _ in range(count):
            r = 2 + int.from_bytes(self.randbytes(self.public.plaintext_bytes), "big") % (n - 3)
            out.append(int(encrypt_with_obfuscator(self.public, 0, obfuscator(self.public, r))))
        return out

    def product(self, members: list[int], messages: Mapping[int, bytes] | None = None) -> list[int]:
        """The slot-wise product of ``members``' ciphertexts (what the honest server computes)."""
        nsq = int(self.public.nsquare)
        acc: list[int] | None = None
        for c in members:
            values = self.cts(c, messages).values(self.width)
            acc = values if acc is None else [a * b % nsq for a, b in zip(acc, values, strict=True)]
        return acc or []

    def consistency(self, views: Mapping[int, tuple[int, ...]], out: ScenarioOutcome) -> dict[int, bytes]:
        """Ask each client to sign its (possibly forged) survivor set; return the signatures it gave."""
        sigs = {}
        for c, survivors in sorted(views.items()):
            request = frame(pm.KIND_CONSISTENCY_REQUEST,
                            struct.pack(">QI", self.rid, len(survivors)) + struct.pack(
                                f">{len(survivors)}Q", *survivors))
            reply = self.call(c, "consistency", out, request, self.cfg.threshold)
            if reply is not None:
                sigs[c] = unframe(reply, pm.KIND_CONSISTENCY_SIGNATURE)[16:]
        return sigs

    def verified(self, survivors: tuple[int, ...], sigs: Mapping[int, bytes],
                 blocks: Mapping[int, Ciphertexts]) -> bytes:
        """A verified aggregate as the malicious server builds it."""
        count = next(iter(blocks.values())).count
        return encode_verified_aggregate(self.rid, survivors, sigs, blocks, count)

    def decrypt(self, decryptor: int, message: bytes, out: ScenarioOutcome,
                threshold: int | None = None) -> list[int] | None:
        """Hand ``decryptor`` an aggregate; return the packed plaintexts it sent back (None: refused)."""
        told = self.cfg.threshold if threshold is None else threshold
        reply = self.call(decryptor, "decrypt", out, message, told)
        if reply is None:
            return None
        payload = unframe(reply, pm.KIND_PLAINTEXT_SUM)
        (count,) = struct.unpack_from(">I", payload, 8)
        w = self.public.plaintext_bytes
        return [int.from_bytes(payload[12 + i * w : 12 + (i + 1) * w], "big") for i in range(count)]

    def recover(self, plaintexts: list[int], count: int) -> np.ndarray:
        """The float sum of ``count`` clients packed in ``plaintexts``."""
        sums = unpack_sum(self.layout, plaintexts, self.length, count).astype(np.float64)
        values: np.ndarray = sums * self.fp.step
        return values

    def score(self, victim: int, recovered: np.ndarray, truth: np.ndarray, out: ScenarioOutcome,
              how: str) -> None:
        """Count the victim as revealed when ``recovered`` is its input to the quantization step."""
        err = float(np.max(np.abs(recovered - truth)))
        if err <= 2 * self.fp.step:
            out.revealed += 1
            out.notes.append(f"client {victim}'s input recovered ({how}; max error {err:.2e})")
        else:
            out.notes.append(f"{how}: decrypted, but not client {victim}'s input (max error {err:.2e})")

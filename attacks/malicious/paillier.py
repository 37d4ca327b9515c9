"""``malicious-server`` against packed Paillier: a server that deviates to decrypt one client's update.

Registered behind the ``malicious-server`` attack (:class:`attacks.MaliciousServerAttack`
runs these scenarios against a Paillier-family aggregator). The attack drives the
sans-IO parties of :mod:`protocols.paillier` directly: honest
:class:`~protocols.paillier.PaillierClient` objects and a
:class:`~protocols.paillier.PaillierServer` whose messages the attacker rewrites. Every
client holds the private key, so the server gets a client's update v exactly when some
client decrypts something whose plaintext is (or differences to) x_v -- a *revealed
secret*, counted only when the server actually recovers x_v from what it got back (to
the quantization step). Scenarios (v: the victim; d, d1, d2: decryptors):

``single-ciphertext``  v's ciphertexts alone, announced as the sum over every survivor
                       (malicious model: the honest-model message; S = {v})
``under-threshold``    a product over fewer than ``threshold`` clients: v's ciphertexts
                       padded with encryptions of 0 the server made (malicious model: T
                       of ``threshold - 1`` clients to sign and decrypt; the full S with
                       every other member's ciphertexts replaced by encryptions of 0)
``split-view``         d1 decrypts the sum over S, d2 over S minus v; the difference is
                       x_v (malicious model: one group is told S, the other S minus v; then
                       d2 is handed the other group's signatures, d1 asked again)
``key-substitution``   the server swaps every advertised X25519 key for its own (a man in
                       the middle on the sealed key), and, in a second round, the key
                       holder's public key for its own Paillier key
``bundle-tampering``   sealed private-key deliveries: a flipped bit, another recipient's
                       copy, the recipient's copy from the previous round, a wrong holder
                       id, and a bundle of the server's own key pair
``ciphertext-replay``  after a round whose sum it saw, the server claims v dropped in the
                       next and has the sum over S minus v decrypted from the *previous*
                       round's ciphertexts; the difference is v's previous update

Lies about a parameter a client takes from its own configuration (:data:`LIE_SCENARIOS`;
each client is built with its ``config``, ``n_clients``, ``min_key_bits`` and
``key_holders``, :class:`~protocols.paillier.PaillierClient`):

``threshold-lie``      the decryptor is told threshold 1 and handed v's ciphertexts as the
                       sum over S = {v} (malicious model: also asked to sign S = {d, v})
``sybil-key-holder``   an identity the server enrolled replaces client n in the advert list
                       and, as key holder, delivers the server's own key pair; whoever
                       takes it encrypts under a key the server holds
``weak-key``           the holder is handed a 256-bit key the server chose (it knows the
                       factors); a holder configured to accept it delivers it
``layout-lie``         each client is handed a slot layout or an encoding not its own:
                       no headroom, more value bits, a wider clip range (accepted, these
                       corrupt the sum through carries between slots; they reveal nothing)
``round-id-lie``       round 6's ciphertexts of S minus v, its key delivery and its survivor
                       set, relabelled or replayed under round 6's id in round 7

With ``own_config=False`` (:func:`run_scenario`) clients are built as before this check,
taking the threshold, key size and key holder from the caller: the baseline that shows
what each check stops.

Each scenario runs against the malicious-server model (``malicious=True``) and, as the
baseline, against the honest-but-curious model (``malicious=False``, the default and
FedMF's model), where single-ciphertext, under-threshold, split-view and
ciphertext-replay succeed. Key substitution and bundle tampering fail in both: the
signed adverts, the holder's signature over ``n`` and the AEAD of the sealed key
(:mod:`protocols.paillier.keys`) are part of both. Honest clients that detect a
deviation raise :class:`~protocols.errors.IntegrityError`; the outcome lists who aborted
and with which message.

Notes:
    Keys: one small key (512 bits by default, tests' size) serves every scenario, as
    the key holder keeps its key across rounds; the scenarios' logic does not depend on
    the key size, which changes only their running time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attacks.malicious.outcomes import (
    PAILLIER_LIES,
    PAILLIER_SCENARIOS,
    ScenarioOutcome,
    check_scenario,
    summarize,
)
from attacks.malicious.paillier_round import PaillierRound
from protocols import ProtocolError
from protocols.paillier import PaillierClient, PrivateKey, RandomnessPool, generate_keypair
from protocols.paillier import aggregator as pa
from protocols.paillier import keys as keymod
from protocols.paillier import messages as pm
from protocols.paillier.aggregator import (
    Ciphertexts,
    consistency_threshold,
    decode_ciphertexts,
    encode_aggregate,
)
from protocols.paillier.raw import PublicKey
from protocols.wire import frame, unframe
from securefedrec.errors import ConfigError

__all__ = ["LIE_SCENARIOS", "SCENARIOS", "run_scenario"]

LIE_SCENARIOS = PAILLIER_LIES
"""Lies about a parameter each client derives from its own configuration (module docstring)."""
SCENARIOS = (*PAILLIER_SCENARIOS, *LIE_SCENARIOS)
HONEST_MODEL = "honest-but-curious"


def _others(rnd: PaillierRound, *exclude: int) -> list[int]:
    return [c for c in rnd.ids if c not in exclude]


# ---- scenarios ------------------------------------------------------------------------------------
def _first_decryption(rnd: PaillierRound, victim: int, attempts: list[tuple[str, int, bytes]],
                      out: ScenarioOutcome) -> None:
    """Send each ``(how, decryptor, message)`` in turn; score the first plaintext that comes back."""
    for how, decryptor, message in attempts:
        plain = rnd.decrypt(decryptor, message, out)
        if plain is not None:
            rnd.score(victim, rnd.recover(plain, 1), rnd.inputs[victim], out, how)
            return


def _single_ciphertext(rnd: PaillierRound, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    everyone = tuple(rnd.ids)
    d = _others(rnd, victim)
    mine = rnd.cts(victim)
    attempts: list[tuple[str, int, bytes]] = [
        ("the honest-model aggregate: v's ciphertexts announced as the sum over all",
         d[0], encode_aggregate(rnd.rid, everyone, rnd.product([victim]), rnd.width)),
    ]
    if rnd.malicious:
        sigs = rnd.consistency(dict.fromkeys(rnd.ids, everyone), out)
        attempts.append(("S = {v} with v's signed ciphertexts and the signatures on S", d[1],
                         rnd.verified((victim,), sigs, {victim: mine})))
    _first_decryption(rnd, victim, attempts, out)


def _under_threshold(rnd: PaillierRound, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    threshold = rnd.cfg.threshold
    others = _others(rnd, victim)
    mine = rnd.cts(victim)
    padded = tuple(sorted([victim, *others[: threshold - 1]]))
    nsq = int(rnd.public.nsquare)
    product = rnd.product([victim])
    for _ in range(threshold - 1):
        product = [a * z % nsq for a, z in zip(product, rnd.zeros(mine.count), strict=True)]
    attempts: list[tuple[str, int, bytes]] = []
    if not rnd.malicious:
        attempts.append((f"v's ciphertexts padded with {threshold - 1} encryptions of 0, announced as the "
                         f"sum over {len(padded)} clients", others[0], encode_aggregate(
                             rnd.rid, padded, product, rnd.width)))
    else:
        small = tuple(sorted([victim, *others[: max(0, threshold - 2)]]))
        sigs = rnd.consistency(dict.fromkeys(small, small), out)  # honest clients refuse: below threshold
        blocks = {c: rnd.cts(c) for c in small}
        attempts.append((f"T of {len(small)} < threshold clients with {len(sigs)} signatures", small[-1],
                         rnd.verified(small, sigs, blocks)))
        everyone = tuple(rnd.ids)
        sigs = rnd.consistency(dict.fromkeys(rnd.ids, everyone), out)
        forged = {}
        for c in everyone:
            real = rnd.cts(c)
            block = real.block if c == victim else b"".join(
                z.to_bytes(rnd.width, "big") for z in rnd.zeros(real.count))
            forged[c] = Ciphertexts(c, rnd.rid, real.count, block, real.signature)
        attempts.append(("S signed by all, every member but v replaced by encryptions of 0", others[0],
                         rnd.verified(everyone, sigs, forged)))
    _first_decryption(rnd, victim, attempts, out)


def _split_view(rnd: PaillierRound, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    s1 = tuple(rnd.ids)
    s2 = tuple(_others(rnd, victim))
    others = _others(rnd, victim)
    d1, d2 = others[0], others[-1]
    plain: dict[str, list[int] | None] = {}
    if not rnd.malicious:
        plain["s1"] = rnd.decrypt(d1, encode_aggregate(rnd.rid, s1, rnd.product(list(s1)), rnd.width), out)
        plain["s2"] = rnd.decrypt(d2, encode_aggregate(rnd.rid, s2, rnd.product(list(s2)), rnd.width), out)
        out.notes.append("d1 decrypted the sum over S, d2 over S minus v")
    else:
        # group A (told S) gets just enough signers for t': v, d1 and the lowest others; B the rest
        group_a = {victim, d1, *[c for c in others if c not in (d1, d2)][: max(0, rnd.t_prime - 2)]}
        group_b = set(rnd.ids) - group_a
        views = {c: (s1 if c in group_a else s2) for c in rnd.ids}
        sigs = rnd.consistency(views, out)
        sig_a = {c: s for c, s in sigs.items() if c in group_a}
        sig_b = {c: s for c, s in sigs.items() if c in group_b}
        blocks = {c: rnd.cts(c) for c in rnd.ids}
        out.notes.append(f"told S: {len(group_a)} clients, told S minus v: {len(group_b)} "
                         f"(t' = {rnd.t_prime})")
        plain["s1"] = rnd.decrypt(d1, rnd.verified(s1, sig_a, blocks), out)
        plain["s2"] = rnd.decrypt(d2, rnd.verified(s2, sig_b, {c: blocks[c] for c in s2}), out)
        if plain["s2"] is None:  # the other group's signatures, then the first decryptor once more
            plain["s2"] = rnd.decrypt(d2, rnd.verified(s2, sigs, {c: blocks[c] for c in s2}), out)
        if plain["s2"] is None:
            plain["s2"] = rnd.decrypt(d1, rnd.verified(s2, sigs, {c: blocks[c] for c in s2}), out)
    got = [k for k, v in plain.items() if v is not None]
    out.notes.append(f"sums obtained: {', '.join(got) or 'none'}")
    p1, p2 = plain.get("s1"), plain.get("s2")
    if p1 is not None and p2 is not None:
        diff = rnd.recover(p1, len(s1)) - rnd.recover(p2, len(s2))
        rnd.score(victim, diff, rnd.inputs[victim], out, "sum over S minus sum over S minus v")


def _key_substitution(make: Callable[[], PaillierRound], server_key: PrivateKey,
                      out: ScenarioOutcome) -> None:
    # (a) man in the middle on the sealed key: every advertised X25519 key replaced by the server's
    rnd = make()
    fake = {c: X25519PrivateKey.from_private_bytes(rnd.randbytes(32)) for c in rnd.ids}
    rnd.advertise()
    payloads = {c: unframe(rnd.adverts[c], pm.KIND_ADVERT) for c in rnd.ids}
    swapped = {c: p[:16] + keymod._raw(fake[c].public_key()) + p[48:] for c, p in payloads.items()}
    before = set(out.aborted)
    for c in rnd.ids:  # each client sees its own advert intact and everyone else's key swapped
        forged = [payloads[a] if a == c else swapped[a] for a in rnd.ids]
        listing = frame(pm.KIND_ADVERT_LIST, struct.pack(">I", len(forged)) + b"".join(forged))
        rnd.call(c, "receive_adverts", out, listing)
    accepted = [c for c in rnd.ids if c not in set(out.aborted) - before]
    out.notes.append(f"advert lists with every peer's X25519 key swapped for the server's: accepted by "
                     f"{len(accepted)} of {len(rnd.ids)} clients")
    if rnd.holder in accepted:
        _finish_mitm(rnd, fake, accepted, out)
    # (b) the server's own Paillier key in place of the holder's signed one
    rnd = make()
    deliveries = rnd.share(out)
    n_own = server_key.public.n_bytes()
    took = []
    for c, message in sorted(deliveries.items()):
        payload = unframe(message, pm.KIND_KEY_DELIVERY)
        (nlen,) = struct.unpack_from(">H", payload, 16)
        substituted = payload[:18] + n_own + payload[18 + nlen :]
        if rnd.call(c, "receive_key", out, frame(pm.KIND_KEY_DELIVERY, substituted)) is not None:
            took.append(c)
    out.notes.append(f"substituted public key: accepted by {len(took)} of {len(deliveries)} clients")
    for c in took:  # a client that took the server's key encrypts under it: the server decrypts
        keypair = rnd.clients[c].keypair
        if keypair is not None and keypair.public.n == server_key.public.n:
            rnd.read_with(c, server_key, out, "encrypted under the server's key")


def _finish_mitm(rnd: PaillierRound, fake: Mapping[int, X25519PrivateKey], accepted: list[int],
                 out: ScenarioOutcome) -> None:
    """The holder sealed the key to the server's X25519 keys: open it; re-seal it to the recipients."""
    bundle = rnd.clients[rnd.holder].share_key(rnd.key)
    deliveries = rnd.server.relay_key(rnd.holder, bundle)
    holder_ad = keymod.parse_advert(unframe(rnd.adverts[rnd.holder], pm.KIND_ADVERT), rnd.directory, rnd.rid)
    stolen: PrivateKey | None = None
    for c, message in sorted(deliveries.items()):
        payload = unframe(message, pm.KIND_KEY_DELIVERY)
        (nlen,) = struct.unpack_from(">H", payload, 16)
        n_raw = payload[18 : 18 + nlen]
        (slen,) = struct.unpack_from(">H", payload, 18 + nlen + 64)
        sealed = payload[18 + nlen + 66 : 18 + nlen + 66 + slen]
        public = PublicKey(int.from_bytes(n_raw, "big"))
        try:  # the holder sealed to fake[c]; the server holds it
            stolen = keymod.open_private_key(sealed, public, fake[c], holder_ad, rnd.rid, c)
        except ProtocolError:
            continue
        # re-seal to c's real key as "the holder" (c saw fake[holder] as the holder's advert)
        real = keymod.parse_advert(unframe(rnd.adverts[c], pm.KIND_ADVERT), rnd.directory, rnd.rid)
        resealed = keymod.seal_private_key(stolen, fake[rnd.holder], real, rnd.rid, rnd.holder)
        body = payload[: 18 + nlen + 64] + struct.pack(">H", len(resealed)) + resealed
        if c in accepted:
            rnd.call(c, "receive_key", out, frame(pm.KIND_KEY_DELIVERY, body))
    if stolen is None:
        return
    for c in accepted:
        if rnd.clients[c].keypair is None:
            continue
        rnd.read_with(c, stolen, out, "private key taken from the sealed bundle")


def _bundle_tampering(make: Callable[..., PaillierRound], server_key: PrivateKey,
                      out: ScenarioOutcome) -> None:
    earlier = make(round_id=6)
    old = earlier.share(out)  # the previous round's deliveries (same identities, same key)
    rnd = make(round_id=7, identities=earlier.identities)
    deliveries = rnd.share(out)
    recipients = sorted(deliveries)

    def parts(message: bytes) -> tuple[bytes, bytes, bytes]:
        payload = unframe(message, pm.KIND_KEY_DELIVERY)
        (nlen,) = struct.unpack_from(">H", payload, 16)
        cut = 18 + nlen + 64
        return payload[:16], payload[16:cut], payload[cut + 2 :]  # ids, n + signature, sealed

    def build(ids: bytes, signed: bytes, sealed: bytes) -> bytes:
        return frame(pm.KIND_KEY_DELIVERY, ids + signed + struct.pack(">H", len(sealed)) + sealed)

    attacks: list[tuple[str, bytes]] = []
    r = recipients
    ids, signed, sealed = parts(deliveries[r[0]])
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    attacks.append(("flipped bit in the sealed key", build(ids, signed, flipped)))
    ids, signed, _ = parts(deliveries[r[1 % len(r)]])
    stranger = parts(deliveries[r[2 % len(r)]])[2]
    attacks.append(("another recipient's sealed copy", build(ids, signed, stranger)))
    ids, signed, _ = parts(deliveries[r[3 % len(r)]])
    attacks.append(("the recipient's copy from the previous round",
                    build(ids, signed, parts(old[r[3 % len(r)]])[2])))
    ids, signed, sealed = parts(deliveries[r[4 % len(r)]])
    other = next(c for c in rnd.ids if c != rnd.holder and c != r[4 % len(r)])
    attacks.append(("a wrong holder id", build(struct.pack(">QQ", other, rnd.rid), signed, sealed)))
    # the server's own key pair, sealed under a key it agreed with the recipient's real advert
    target = r[5 % len(r)]
    ephemeral = X25519PrivateKey.from_private_bytes(rnd.randbytes(32))
    advert = keymod.parse_advert(unframe(rnd.adverts[target], pm.KIND_ADVERT), rnd.directory, rnd.rid)
    own_sealed = keymod.seal_private_key(server_key, ephemeral, advert, rnd.rid, rnd.holder)
    n_own = server_key.public.n_bytes()
    unsigned = struct.pack(">H", len(n_own)) + n_own + bytes(64)
    attacks.append(("the server's own key pair as the holder's",
                    build(struct.pack(">QQ", rnd.holder, rnd.rid), unsigned, own_sealed)))
    targets = [r[0], r[1 % len(r)], r[3 % len(r)], r[4 % len(r)], target]
    verdicts = []
    for (how, message), c in zip(attacks, targets, strict=True):
        took = rnd.call(c, "receive_key", out, message) is not None  # a refused delivery changes nothing
        verdicts.append(f"{how} to client {c}: {'ACCEPTED' if took else 'refused'}")
        keypair = rnd.clients[c].keypair
        if took and keypair is not None and keypair.public.n == server_key.public.n:
            rnd.read_with(c, server_key, out, "encrypted under the server's key")
    out.notes.extend(verdicts)


def _ciphertext_replay(make: Callable[..., PaillierRound], victim: int, out: ScenarioOutcome) -> None:
    earlier = make(round_id=6)
    earlier.honest_until_masked(out)
    everyone = tuple(earlier.ids)
    d = _others(earlier, victim)[0]
    if earlier.malicious:
        sigs = earlier.consistency(dict.fromkeys(everyone, everyone), out)
        earlier.server.collect_signatures(
            {c: frame(pm.KIND_CONSISTENCY_SIGNATURE, struct.pack(">QQ", c, earlier.rid) + s)
             for c, s in sigs.items()})
    before = earlier.decrypt(d, earlier.server.aggregate_message(), out)  # the honest sum of round 6
    rnd = make(round_id=7, identities=earlier.identities)
    rnd.honest_until_masked(out)
    rest = tuple(_others(rnd, victim))
    old = earlier.ciphertexts
    if rnd.malicious:  # v "dropped": S minus v is signed honestly, then round 6's ciphertexts are replayed
        sigs = rnd.consistency(dict.fromkeys(rest, rest), out)
        message = rnd.verified(rest, sigs, {c: decode_ciphertexts(old[c]) for c in rest})
    else:
        message = encode_aggregate(rnd.rid, rest, rnd.product(list(rest), old), rnd.width)
    after = rnd.decrypt(_others(rnd, victim)[0], message, out)
    out.notes.append(f"round 6 sum seen: {before is not None}; replayed round-6 ciphertexts decrypted in "
                     f"round 7: {after is not None}")
    if before is not None and after is not None:
        diff = earlier.recover(before, len(everyone)) - earlier.recover(after, len(rest))
        rnd.score(victim, diff, earlier.inputs[victim], out,
                  "round-6 sum minus the replayed round-6 sum without v")


# ---- lies about the clients' own parameters ------------------------------------------------------
def _threshold_lie(rnd: PaillierRound, victim: int, out: ScenarioOutcome) -> None:
    rnd.honest_until_masked(out)
    d = _others(rnd, victim)
    alone = (victim,)
    if rnd.malicious:  # S = {d, v} to sign, "threshold 1": t' and the clients' own threshold refuse it
        pair = tuple(sorted((d[0], victim)))
        sigs: dict[int, bytes] = {}
        for c in pair:
            request = frame(pm.KIND_CONSISTENCY_REQUEST, struct.pack(">QI2Q", rnd.rid, 2, *pair))
            reply = rnd.call(c, "consistency", out, request, 1)
            if reply is not None:
                sigs[c] = unframe(reply, pm.KIND_CONSISTENCY_SIGNATURE)[16:]
        out.notes.append(f"S = {{d, v}} signed by {len(sigs)} of 2 clients told threshold 1")
    message = encode_aggregate(rnd.rid, alone, rnd.product([victim]), rnd.width)
    plain = rnd.decrypt(d[-1], message, out, threshold=1)
    out.notes.append(f"v's ciphertexts as the sum over S = {{v}}, decryptor told threshold 1: "
                     f"{'decrypted' if plain is not None else 'refused'}")
    if plain is not None:
        rnd.score(victim, rnd.recover(plain, 1), rnd.inputs[victim], out, "threshold 1: S = {v} decrypted")


def _sybil_key_holder(rnd: PaillierRound, server_key: PrivateKey, out: ScenarioOutcome) -> None:
    sybil_id = max(rnd.ids) + 1000
    sybil_identity = Ed25519PrivateKey.from_private_bytes(rnd.randbytes(32))
    rnd.directory[sybil_id] = sybil_identity.public_key()  # enrolled by the server: the PKI is its
    rnd.identities[sybil_id] = sybil_identity
    sybil = PaillierClient(sybil_id, sybil_identity, rnd.directory, rnd.rid, malicious=rnd.malicious,
                           n_clients=len(rnd.ids) + 1000)
    replaced = rnd.ids[-1]  # the Sybil takes client n's place, so the list still holds n adverts
    rnd.advertise()
    listed = {c: unframe(rnd.adverts[c], pm.KIND_ADVERT) for c in rnd.ids if c != replaced}
    listed[sybil_id] = unframe(sybil.advertise(), pm.KIND_ADVERT)
    listing = frame(pm.KIND_ADVERT_LIST, struct.pack(">I", len(listed)) + b"".join(
        listed[c] for c in sorted(listed)))
    sybil.receive_adverts(listing)
    receivers = [c for c in rnd.ids if c != replaced]
    for c in receivers:
        rnd.call(c, "receive_adverts", out, listing)
    deliveries = rnd.server.relay_key(sybil_id, sybil.share_key(server_key))
    took = [c for c in receivers if c in deliveries
            and rnd.call(c, "receive_key", out, deliveries[c]) is not None]
    out.notes.append(f"key pair of Sybil holder {sybil_id} (the server's): accepted by {len(took)} of "
                     f"{len(receivers)} clients")
    for c in took:
        rnd.read_with(c, server_key, out, "encrypted under the Sybil holder's key")


def _weak_key(rnd: PaillierRound, weak: PrivateKey, out: ScenarioOutcome) -> None:
    listing = rnd.advertise()
    for c in rnd.ids:
        rnd.call(c, "receive_adverts", out, listing)
    bundle = rnd.call(rnd.holder, "share_key", out, weak)
    out.notes.append(f"holder handed a {weak.public.bits}-bit key: "
                     f"{'shared it' if bundle is not None else 'refused'}")
    # a holder configured to accept it (or compromised) delivers it; the recipients decide for themselves
    lenient = PaillierRound(len(rnd.ids), rnd.cfg.threshold, rnd.malicious, rnd.key, rnd.length,
                     np.random.default_rng(1), rnd.randbytes, round_id=rnd.rid, identities=rnd.identities,
                     own_config=rnd.own_config)
    lenient.inputs = rnd.inputs
    lenient.clients[lenient.holder] = lenient.client(lenient.holder, min_key_bits=weak.public.bits)
    listing = lenient.advertise()
    for c in lenient.ids:
        lenient.call(c, "receive_adverts", out, listing)
    deliveries = lenient.server.relay_key(lenient.holder, lenient.clients[lenient.holder].share_key(weak))
    took = [c for c, m in sorted(deliveries.items()) if lenient.call(c, "receive_key", out, m) is not None]
    out.notes.append(f"{weak.public.bits}-bit key from a lenient holder: accepted by {len(took)} of "
                     f"{len(deliveries)} clients")
    for c in took:
        lenient.read_with(c, weak, out, f"encrypted under a {weak.public.bits}-bit key the server chose")


def _layout_lie(rnd: PaillierRound, out: ScenarioOutcome) -> None:
    deliveries = rnd.share(out)
    for c, m in deliveries.items():
        rnd.call(c, "receive_key", out, m)
    fp, layout = rnd.fp, rnd.layout
    lies = [
        ("no headroom for the sum", fp, dataclasses.replace(layout, headroom_bits=0)),
        ("two more value bits", dataclasses.replace(fp, value_bits=fp.value_bits + 2),
         dataclasses.replace(layout, value_bits=fp.value_bits + 2)),
        ("an 8x wider clip range", dataclasses.replace(fp, clip_range=8 * fp.clip_range), layout),
    ]
    for i, c in enumerate(rnd.ids):
        how, told_fp, told_layout = lies[i % len(lies)]
        keypair = rnd.clients[c].keypair
        if keypair is None:
            continue
        pool = RandomnessPool(keypair.public)
        sent = rnd.call(c, "masked_input", out, rnd.inputs[c], told_fp, told_layout,
                        np.random.default_rng([c, rnd.rid]), pool)
        out.notes.append(f"client {c} told {how}: {'encrypted' if sent is not None else 'refused'}")


def _round_id_lie(make: Callable[..., PaillierRound], victim: int, out: ScenarioOutcome) -> None:
    earlier = make(round_id=6)
    old_deliveries = earlier.share(out)
    for c, m in old_deliveries.items():
        earlier.call(c, "receive_key", out, m)
    for c in earlier.ids:
        earlier.ciphertexts[c] = earlier.encrypt(c)
    everyone = tuple(earlier.ids)
    total = encode_aggregate(6, everyone, earlier.product(list(everyone)), earlier.width)
    d = _others(earlier, victim)[0]
    before = None if earlier.malicious else earlier.decrypt(d, total, out)  # the honest sum of round 6
    rnd = make(round_id=7, identities=earlier.identities)
    deliveries = rnd.share(out)
    recipients = sorted(deliveries)
    relabelled = {recipients[0]: old_deliveries[recipients[0]]}  # round 6's delivery, as it was
    for c in recipients:
        message = relabelled.get(c, deliveries[c])
        rnd.call(c, "receive_key", out, message)
    rest = tuple(_others(rnd, victim))
    request = frame(pm.KIND_CONSISTENCY_REQUEST, struct.pack(f">QI{len(rest)}Q", 6, len(rest), *rest))
    signed = [c for c in rest if rnd.malicious and rnd.call(c, "consistency", out, request) is not None]
    replay = encode_aggregate(6, rest, earlier.product(list(rest)), earlier.width)
    decryptor = next((c for c in rest if rnd.clients[c].keypair is not None and not rnd.clients[c].failed),
                     None)
    after = rnd.decrypt(decryptor, replay, out) if decryptor is not None else None
    out.notes.append(f"round 6's key delivery replayed in round 7, round-6 survivor set to sign "
                     f"(signed by {len(signed)}), round 6's sum over S minus v under its own id: "
                     f"{'decrypted' if after is not None else 'refused'}")
    if before is not None and after is not None:
        diff = earlier.recover(before, len(everyone)) - earlier.recover(after, len(rest))
        rnd.score(victim, diff, earlier.inputs[victim], out, "round-6 sum minus a relabelled round-6 sum")


def run_scenario(
    scenario: str,
    *,
    clients: int,
    threshold: int,
    malicious: bool,
    key: PrivateKey | None = None,
    server_key: PrivateKey | None = None,
    key_bits: int = 512,
    length: int = 16,
    seed: int = 0,
    randbytes: Callable[[int], bytes] = os.urandom,
    own_config: bool = True,
    weak_key: PrivateKey | None = None,
) -> ScenarioOutcome:
    """Run one scenario in fresh rounds and report what the server got.

    Args:
        key: the round key (default: a fresh ``key_bits``-bit one).
        server_key: the server's own key pair of the same size, for the substitution
            scenarios (default: a fresh one when needed).
        own_config: clients hold the round's threshold, the key size and the key holder as
            their own configuration (the protocol's defence); ``False`` builds them taking
            those from the caller, the baseline of :data:`LIE_SCENARIOS`.
        weak_key: the server's small key of ``weak-key`` (default: a fresh 256-bit one).

    Raises:
        ConfigError: unknown scenario (the message lists them) or too few clients.
    """
    check_scenario(scenario, SCENARIOS, clients, 4, "malicious-server against paillier needs")
    if not 2 <= threshold <= clients:
        raise ConfigError(f"threshold must be in [2, {clients}], got {threshold}")
    out = ScenarioOutcome(scenario, malicious, honest_model=HONEST_MODEL)
    rng = np.random.default_rng(seed)
    key = key if key is not None else generate_keypair(key_bits)

    def make(round_id: int = 7, identities: Mapping[int, Ed25519PrivateKey] | None = None) -> PaillierRound:
        return PaillierRound(clients, threshold, malicious, key, length, rng, randbytes, round_id=round_id,
                      identities=identities, own_config=own_config)

    victim = clients  # neither the key holder (client 1) nor the first decryptor
    if scenario == "single-ciphertext":
        _single_ciphertext(make(), victim, out)
    elif scenario == "under-threshold":
        _under_threshold(make(), victim, out)
    elif scenario == "split-view":
        _split_view(make(), victim, out)
    elif scenario == "key-substitution":
        _key_substitution(make, server_key or generate_keypair(key.public.bits), out)
    elif scenario == "bundle-tampering":
        _bundle_tampering(make, server_key or generate_keypair(key.public.bits), out)
    elif scenario == "ciphertext-replay":
        _ciphertext_replay(make, victim, out)
    elif scenario == "threshold-lie":
        _threshold_lie(make(), victim, out)
    elif scenario == "sybil-key-holder":
        _sybil_key_holder(make(), server_key or generate_keypair(key.public.bits), out)
    elif scenario == "weak-key":
        _weak_key(make(), weak_key or generate_keypair(keymod.MIN_KEY_BITS), out)
    elif scenario == "layout-lie":
        _layout_lie(make(), out)
    else:
        _round_id_lie(make, victim, out)
    out.aborted = sorted(set(out.aborted))
    return out


def attack_details(clients: int, threshold_fraction: float, scenarios: tuple[str, ...],
                   options: Mapping[str, Any], seed: int) -> tuple[int, int, dict[str, Any]]:
    """Every scenario in both models: (revealed in the malicious model, baseline, details).

    The default set (:data:`~attacks.malicious.outcomes.PAILLIER_SCENARIOS`, what the attack
    runs unless told otherwise) also runs the :data:`LIE_SCENARIOS`.
    """
    if tuple(scenarios) == PAILLIER_SCENARIOS:
        scenarios = SCENARIOS
    threshold = max(2, math.ceil(threshold_fraction * clients))
    keypair = options.get("keypair")
    key = pa.as_private_key(keypair) if keypair is not None else generate_keypair(
        int(options.get("key_bits", 512)))
    own = generate_keypair(key.public.bits)  # the server's key for the substitution scenarios
    summary = summarize(run_scenario(s, clients=clients, threshold=threshold, malicious=m, key=key,
                                     server_key=own, seed=seed)
                        for s in scenarios for m in (True, False))
    return summary.value, summary.baseline, {
        "clients": clients, "threshold": threshold, "consistency_threshold": consistency_threshold(clients),
        "key_bits": key.public.bits,
        **summary.details,
        "baseline_is": "the same scenarios against the honest-but-curious Paillier protocol "
                       "(malicious=False: no ciphertext signatures, no consistency round, the decryptor "
                       "checks only the announced survivor count)",
    }

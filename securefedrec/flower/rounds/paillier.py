"""The server's packed-Paillier round over Flower (the stages of :mod:`protocols.paillier.aggregator`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from protocols import AggregationAborted, RoundConfig, Stage
from protocols.base import abort_if_below_threshold
from securefedrec.errors import DecodeError
from securefedrec.flower.messages import FlowerStage, paillier_round_info
from securefedrec.flower.rounds.exchange import Exchanges, Info, RoundOutcome
from securefedrec.flower.transport import NodeLink

__all__ = ["paillier_round"]

log = logging.getLogger("securefedrec.flower")


def paillier_round(
    link: NodeLink,
    directory: Mapping[int, bytes],
    config: RoundConfig,
    sampled: Sequence[int],
    node_of: Mapping[int, int],
    view: np.ndarray,
    *,
    length: int,
    train_timeout: float,
    stage_timeout: float,
    info: Info | None = None,
    client_info: Mapping[int, Info] | None = None,
    trace: dict[str, set[int]] | None = None,
    malicious: bool = False,
) -> RoundOutcome:
    """Drive a :class:`~protocols.paillier.PaillierServer` through a packed-Paillier round over Flower.

    The stages of :mod:`protocols.paillier.aggregator`, one Flower message each: train + advert,
    advert list (the lowest advertiser holds the key; if it does not answer, the next one that
    did is asked, :attr:`FlowerStage.PAILLIER_HOLD`), sealed keys + acknowledgements, ciphertexts
    (the server multiplies them), and decryption of the product by one key-holding survivor
    (the next one if it does not answer). The server never holds the private key. With
    ``malicious`` the ciphertexts are signed, a consistency stage
    (:attr:`FlowerStage.PAILLIER_CONSISTENCY`) collects the survivors' signatures on the
    survivor set (fewer than t' = n // 2 + 1 abort the round) and the decryptor, one of the
    signers, receives every survivor's signed ciphertexts and checks them before it decrypts
    (:mod:`protocols.paillier.aggregator`).

    Args:
        directory: client id -> raw Ed25519 identity key (what the nodes reported; each client
            checks its peers against its own out-of-band PKI).
        config: the round's protocol settings; ``sampled``: the round's clients.
        length: the number of coordinates each client sends.
        malicious: the malicious-server model (the nodes run it when their settings say so).
        The other arguments as in :func:`secagg_round`.

    Raises:
        AggregationAborted: fewer than ``threshold`` clients at a stage (malicious model: fewer
            than t' consistency signatures), or nobody left to hold the key or decrypt.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from protocols.paillier import PaillierServer
    from protocols.paillier.aggregator import round_layout

    r = config.round_id
    x = Exchanges(link, node_of, r, sampled, trace)
    keys = {c: Ed25519PublicKey.from_public_bytes(directory[c]) for c in sampled if c in directory}
    server = PaillierServer(keys, config, len(sampled), malicious=malicious)

    def aborted(why: str) -> AggregationAborted:
        return AggregationAborted(f"round {r}: {why}; round aborted, nothing revealed", survivors=0,
                                  threshold=config.threshold, round_id=r)

    adverts = x(FlowerStage.PAILLIER_TRAIN, dict.fromkeys(sampled, b""), train_timeout, view=view,
                info={**paillier_round_info(config, length), **(info or {})}, client_info=client_info)
    abort_if_below_threshold(len(adverts), config, Stage.ADVERTISE)
    advert_list = x.on_server(server.collect_adverts, adverts)
    holder = min(adverts)
    seen = x(FlowerStage.PAILLIER_ADVERTS, dict.fromkeys(adverts, advert_list), stage_timeout,
             info={"holder": holder})
    bundle = seen.get(holder) or None
    for candidate in sorted(seen):  # the lowest advertiser that answers holds the key
        if bundle is not None:
            break
        if candidate == holder:
            continue
        holder = candidate
        bundle = x(FlowerStage.PAILLIER_HOLD, {candidate: b""}, stage_timeout).get(candidate) or None
    if bundle is None:
        raise aborted("no advertiser answered as the Paillier key holder")
    deliveries = x.on_server(server.relay_key, holder, bundle)
    acks = x(FlowerStage.PAILLIER_KEY, {c: m for c, m in deliveries.items() if c in seen}, stage_timeout)
    x.on_server(server.collect_acks, acks)
    abort_if_below_threshold(len(server.key_holders), config, Stage.SHARE_KEYS)
    holders = sorted(server.key_holders)
    ranks = {c: {"rank": i} for i, c in enumerate(holders)}  # the order of the in-process senders
    ciphertexts = x(FlowerStage.PAILLIER_ENCRYPT, dict.fromkeys(holders, b""), stage_timeout,
                    client_info=ranks)
    x.on_server(server.collect_ciphertexts, ciphertexts)  # aborts below threshold
    decryptors = sorted(server.survivors)
    if malicious:  # the survivors sign S; fewer than t' signatures abort; only a signer may decrypt
        request = x.on_server(server.consistency_request)
        signatures = x(FlowerStage.PAILLIER_CONSISTENCY, dict.fromkeys(server.survivors, request),
                       stage_timeout)
        x.on_server(server.collect_signatures, signatures)
        decryptors = server.signers
    aggregate = x.on_server(server.aggregate_message)
    if server.public is None:  # set by relay_key; kept for the type checker
        raise aborted("no public key")
    fp, layout = round_layout(len(sampled), config, server.public)
    for decryptor in decryptors:
        plain = x(FlowerStage.PAILLIER_DECRYPT, {decryptor: aggregate}, stage_timeout).get(decryptor)
        if plain is None:
            continue
        try:
            total = x.on_server(server.decode_sum, plain, fp, layout, length)
        except DecodeError as exc:
            log.warning("round %s: the plaintext sum from client %s is malformed (%s); asking the next", r,
                        decryptor, exc)
            continue
        return RoundOutcome(total, frozenset(server.survivors), float(fp.step), x.up, x.down, x.seconds,
                            x.answered)
    raise aborted("no key-holding client left to decrypt the sum")


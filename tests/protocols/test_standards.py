"""Known answers from the standards behind the primitives the protocols wrap.

Each vector file under tests/vectors/ names its source (NIST SP 800-38A, RFC 5869,
RFC 7748, RFC 8032, the GCM specification). Every test checks the raw primitive from
``cryptography`` against the standard *and* the project's wrapper of it
(:mod:`protocols.prg`, :mod:`protocols.secagg._crypto`, :mod:`protocols.paillier.keys`);
where the wrapper does more than the raw step (a fixed counter, a zero salt, an
``info`` label), the comment says how it composes the step the standard pins down.
"""

from __future__ import annotations

import hmac
import json
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from protocols import IntegrityError, ProtocolError, prg
from protocols.secagg import _crypto
from tests.vectors import VECTOR_DIR, vectors

X = bytes.fromhex


def _raw(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ecb(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _vector(name: str, index: int = 0) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads((VECTOR_DIR / f"{name}.json").read_text())["vectors"][index]
    return vector


# ---- AES-CTR (NIST SP 800-38A) and the mask PRG ------------------------------------------------------
@vectors("aes_ctr_sp800_38a")
def test_aes_ctr_sp800_38a(vector: dict[str, Any]) -> None:
    encryptor = Cipher(algorithms.AES(X(vector["key"])), modes.CTR(X(vector["counter"]))).encryptor()
    assert encryptor.update(X(vector["plaintext"])) + encryptor.finalize() == X(vector["ciphertext"])


@vectors("aes_ecb_sp800_38a")
def test_aes256_block_cipher_sp800_38a(vector: dict[str, Any]) -> None:
    assert _ecb(X(vector["key"]), X(vector["plaintext"])) == X(vector["ciphertext"])


def test_mask_prg_is_aes256_ctr_from_counter_zero() -> None:
    """prg.keystream(seed, m) is AES-256-CTR keyed by the seed with the counter block 0, 1, 2, ...

    The wrapper fixes the initial counter block to zero, so the F.5.5 vector (counter
    f0f1...) cannot be fed to it. The chain instead: the AES-256 block cipher (checked
    against F.1.5 above) reproduces F.5.5's output blocks AES_K(T_j) = P_j xor C_j, and
    the wrapper's keystream equals that block cipher on the counters 0, 1, 2, 3.
    """
    ctr = _vector("aes_ctr_sp800_38a", 1)  # F.5.5 CTR-AES256: a 256-bit key, the PRG's seed size
    key = X(ctr["key"])
    assert len(key) == prg.SEED_BYTES
    first = int.from_bytes(X(ctr["counter"]), "big")
    counters = b"".join(((first + j) % 2**128).to_bytes(16, "big") for j in range(4))
    outputs = bytes(p ^ c for p, c in zip(X(ctr["plaintext"]), X(ctr["ciphertext"]), strict=True))
    assert _ecb(key, counters) == outputs  # the block cipher the next line uses is the standard's
    zero_counters = b"".join(j.to_bytes(16, "big") for j in range(4))
    assert prg.keystream(key, 64) == _ecb(key, zero_counters)
    assert prg.keystream(key, 20) == _ecb(key, zero_counters)[:20]  # a prefix, not a fresh stream


@pytest.mark.parametrize("ring_bits", [64, 32, 13])
def test_mask_words_are_the_keystream_read_little_endian(ring_bits: int) -> None:
    """expand and MaskExpander read the same keystream: 8 (or 4) bytes per element, little-endian."""
    key = X(_vector("aes_ctr_sp800_38a", 1)["key"])
    w = prg.word_bytes(ring_bits)
    words = np.frombuffer(_ecb(key, b"".join(j.to_bytes(16, "big") for j in range(4))), dtype=f"<u{w}")
    mask = (1 << ring_bits) - 1
    want = [int(v) & mask for v in words]
    assert prg.expand(key, len(want), ring_bits).tolist() == want
    expander = prg.MaskExpander(len(want), ring_bits)
    acc = expander.accumulator()
    expander.add(acc, key)
    assert [int(v) & mask for v in acc] == want


# ---- HKDF (RFC 5869) -------------------------------------------------------------------------------
@vectors("hkdf_rfc5869")
def test_hkdf_rfc5869(vector: dict[str, Any]) -> None:
    ikm, salt, info = X(vector["ikm"]), X(vector["salt"]), X(vector["info"])
    length = vector["length"]
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")  # extract (RFC 5869 2.2; empty salt = HashLen zeros)
    assert prk == X(vector["prk"])
    assert HKDFExpand(hashes.SHA256(), length, info).derive(prk) == X(vector["okm"])
    assert HKDF(hashes.SHA256(), length, salt or None, info).derive(ikm) == X(vector["okm"])


def test_secagg_hkdf_wrapper_against_rfc5869() -> None:
    """_crypto.hkdf_sha256 is HKDF-SHA256 with a zero salt and L = 32: RFC 5869 Test Case 3, truncated.

    Test Case 3 has an empty salt (HashLen zeros) and empty info, so the wrapper's output
    is its OKM's first 32 bytes (T(1)). With the other cases' info the wrapper equals the
    library's HKDF with salt None and L = 32; the protocol's keys add a label
    (``securefedrec/secagg/v1/<purpose>``, round, client pair) as ``info``, checked below.
    """
    cases = [_vector("hkdf_rfc5869", i) for i in range(3)]
    tc3 = cases[2]
    assert _crypto.hkdf_sha256(X(tc3["ikm"]), X(tc3["info"])) == X(tc3["okm"])[:32]
    for case in cases:
        ikm, info = X(case["ikm"]), X(case["info"])
        assert _crypto.hkdf_sha256(ikm, info) == HKDF(hashes.SHA256(), 32, None, info).derive(ikm)


# ---- X25519 (RFC 7748) -----------------------------------------------------------------------------
@vectors("x25519_rfc7748")
def test_x25519_rfc7748(vector: dict[str, Any]) -> None:
    if "iterations" in vector:  # section 5.2: k = u = 9; then k, u = X25519(k, u), k
        k = u = (9).to_bytes(32, "little")
        for _ in range(vector["iterations"]):
            k, u = X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u)), k
        assert k == X(vector["output"])
        return
    private = X25519PrivateKey.from_private_bytes(X(vector["scalar"]))
    assert private.exchange(X25519PublicKey.from_public_bytes(X(vector["u"]))) == X(vector["output"])


@vectors("x25519_dh_rfc7748")
def test_x25519_diffie_hellman_rfc7748(vector: dict[str, Any]) -> None:
    alice = X25519PrivateKey.from_private_bytes(X(vector["alice_private"]))
    bob = X25519PrivateKey.from_private_bytes(X(vector["bob_private"]))
    assert _raw(alice.public_key()) == X(vector["alice_public"])
    assert _raw(bob.public_key()) == X(vector["bob_public"])
    shared = X(vector["shared"])
    # the SecAgg wrapper: the raw agreement, both ways
    assert _crypto.agree(alice, X(vector["bob_public"])) == shared
    assert _crypto.agree(bob, X(vector["alice_public"])) == shared
    # SecAgg's pairwise mask seed composes the agreement with the labelled HKDF (symmetric in u, v)
    label = b"securefedrec/secagg/v1/pairwise-mask" + struct.pack(">QQQ", 5, 2, 9)
    seed = _crypto.hkdf_sha256(shared, label)
    assert _crypto.mask_seed(alice, X(vector["bob_public"]), 5, 9, 2) == seed
    assert _crypto.mask_seed(bob, X(vector["alice_public"]), 5, 2, 9) == seed


def test_paillier_key_transport_composes_x25519_and_hkdf() -> None:
    """keys._pairwise_key = HKDF-SHA256(salt None, L 32, info label) of the RFC 7748 shared secret."""
    from protocols.paillier import keys as keymod

    vector = _vector("x25519_dh_rfc7748")
    alice = X25519PrivateKey.from_private_bytes(X(vector["alice_private"]))
    info = keymod._DOMAIN + b"key-transport" + struct.pack(">QQQ", 7, 1, 4)
    want = HKDF(hashes.SHA256(), 32, None, info).derive(X(vector["shared"]))
    assert keymod._pairwise_key(alice, X(vector["bob_public"]), 7, 1, 4) == want
    assert _crypto.hkdf_sha256(X(vector["shared"]), info) == want  # the two wrappers' HKDF agree


@vectors("x25519_low_order")
def test_x25519_low_order_points_give_no_key(vector: dict[str, Any]) -> None:
    """The primitive refuses the all-zero shared secret (RFC 7748 6.1); so does Paillier's key transport."""
    from protocols.paillier import keys as keymod

    own = X25519PrivateKey.from_private_bytes(X(_vector("x25519_dh_rfc7748")["alice_private"]))
    with pytest.raises(ValueError):
        own.exchange(X25519PublicKey.from_public_bytes(X(vector["u"])))
    with pytest.raises(IntegrityError, match="invalid or of low order"):
        keymod._pairwise_key(own, X(vector["u"]), 7, 1, 4)


@vectors("x25519_low_order")
def test_secagg_key_agreement_refuses_low_order_points(vector: dict[str, Any]) -> None:
    own = X25519PrivateKey.from_private_bytes(X(_vector("x25519_dh_rfc7748")["alice_private"]))
    with pytest.raises(ProtocolError):
        _crypto.agree(own, X(vector["u"]))
    with pytest.raises(ProtocolError):
        _crypto.mask_seed(own, X(vector["u"]), 5, 2, 9)


# ---- Ed25519 (RFC 8032) ----------------------------------------------------------------------------
@vectors("ed25519_rfc8032")
def test_ed25519_rfc8032(vector: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(X(vector["secret"]))
    message, signature = X(vector["message"]), X(vector["signature"])
    assert _raw(key.public_key()) == X(vector["public"])
    assert key.sign(message) == signature  # Ed25519 signing is deterministic
    # the SecAgg wrappers: sign is the raw step; verify takes the raw public key and raises
    assert _crypto.sign(key, message) == signature
    _crypto.verify(X(vector["public"]), signature, message, "RFC 8032")
    forged = signature[:-1] + bytes([signature[-1] ^ 1])
    with pytest.raises(IntegrityError, match="RFC 8032: invalid signature"):
        _crypto.verify(X(vector["public"]), forged, message, "RFC 8032")
    with pytest.raises(IntegrityError):
        _crypto.verify(X(vector["public"]), signature, message + b"\x00", "RFC 8032")


def test_secagg_verify_refuses_a_small_order_public_key() -> None:
    """The identity point as public key: R = identity, S = 0 would "sign" every message."""
    identity = bytes([1]) + bytes(31)
    for message in (b"", b"securefedrec/secagg/v1/consistency"):
        with pytest.raises(IntegrityError, match="small order: invalid signature"):
            _crypto.verify(identity, identity + bytes(32), message, "small order")


def test_paillier_signatures_are_ed25519_over_a_labelled_statement() -> None:
    """keys.sign_survivors = the RFC 8032 signature of the domain-labelled statement (TEST 1's key)."""
    from protocols.paillier import keys as keymod

    vector = _vector("ed25519_rfc8032")
    key = Ed25519PrivateKey.from_private_bytes(X(vector["secret"]))
    statement = keymod._DOMAIN + b"consistency" + struct.pack(">QI3Q", 7, 3, 1, 2, 5)
    signature = keymod.sign_survivors(key, 7, (1, 2, 5))
    Ed25519PublicKey.from_public_bytes(X(vector["public"])).verify(signature, statement)
    keymod.verify_survivors(key.public_key(), signature, 7, (1, 2, 5), 1, "test")
    with pytest.raises(IntegrityError):
        keymod.verify_survivors(key.public_key(), signature, 7, (1, 2), 1, "test")


# ---- AES-GCM (the GCM specification, adopted by NIST SP 800-38D) -----------------------------------
@vectors("aes_gcm_mcgrew_viega")
def test_aes_gcm_share_encryption(vector: dict[str, Any]) -> None:
    """_crypto.encrypt_share is AES-256-GCM with the all-zero 96-bit nonce (each key encrypts once)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, aad = X(vector["key"]), X(vector["aad"])
    want = X(vector["ciphertext"]) + X(vector["tag"])
    assert AESGCM(key).encrypt(X(vector["iv"]), X(vector["plaintext"]), aad) == want
    assert _crypto.encrypt_share(key, aad, X(vector["plaintext"])) == want
    assert _crypto.decrypt_share(key, aad, want, "GCM") == X(vector["plaintext"])
    with pytest.raises(IntegrityError, match="GCM: share ciphertext failed authentication"):
        _crypto.decrypt_share(key, aad + b"x", want, "GCM")

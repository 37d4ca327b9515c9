"""Paillier key generation and authenticated delivery of the private key to the clients.

Key distribution (one key-holder client, the server only relays):

1. **Enrolment.** Every client has a long-term Ed25519 identity key whose
   public half the others know (a PKI; in the simulator the aggregator keeps
   the table).
2. **ADVERTISE.** Each client sends a fresh X25519 public key signed with its
   identity key (:func:`make_advert`); the server relays the list to everyone.
3. **SHARE_KEYS.** The key holder -- the advertising client the server picks
   (the lowest id; the next one if it does not answer) -- generates the Paillier
   key pair once (:func:`generate_keypair`, from ``phe``) and keeps it across
   rounds. It signs the public key ``n`` and, for every other advertiser,
   seals ``p || q`` with AES-256-GCM under a key derived by HKDF-SHA256 from the
   X25519 shared secret of the two adverts, bound to the round and both ids
   (:func:`seal_private_key`). The server relays each client its sealed copy;
   it sees only ciphertexts and never learns ``p, q``. Each recipient checks
   the signature and ``p q = n`` (:func:`open_private_key`) and acknowledges
   with a signature over the round, its id and ``SHA-256(n)``.
4. Clients encrypt under ``n``; the server multiplies ciphertexts; any
   key-holding survivor decrypts the sum.

Threat model. What binds what, in both server models (a malicious server
cannot get around it, ``attacks.malicious.paillier`` key-substitution and
bundle-tampering scenarios):

- an advert signs ``(client id, round, X25519 key)``: the server cannot swap in
  its own X25519 key (a man in the middle on the sealed private key) or replay
  an advert from another round;
- the holder signs ``(round, holder id, n)``: a recipient refuses another
  public key (the server's own, whose private half it knows), a signature from
  another round or a delivery that names another holder;
- the sealed ``p || q`` is AES-GCM under a key derived from the two round
  adverts with ``(round, holder, recipient)`` in the HKDF info and
  ``(round, holder, recipient, n)`` as associated data, and ``p q = n`` is
  checked: a flipped bit, another recipient's copy, a copy from an earlier
  round or a key pair for another ``n`` is refused;
- acknowledgements sign ``(round, client id, SHA-256(n))``.

Every client holds the private key, so clients must not see one another's
ciphertexts -- the server never forwards them -- and a server that colludes with
any client reads everything (as in FedMF, Chai et al. 2020). With the default
honest-but-curious server the decryptor decrypts whatever product it is handed
when the *announced* survivor list reaches ``threshold``: a malicious server
can have one client's ciphertexts decrypted, or two sums that differ in one
client. The malicious-server model (``PaillierAggregator(malicious=True)``,
:mod:`protocols.paillier.aggregator`) adds :func:`sign_ciphertexts` (round,
client id, SHA-256 of the ciphertext block) and :func:`sign_survivors` (round,
sorted survivor set, signed at most once per round), and a decryptor that
checks both before it multiplies and decrypts, once per round.

Notes:
    Key size. The default is 2048 bits: NIST SP 800-57 Part 1 rates a
    2048-bit factoring modulus at about 112-bit security, acceptable through
    2030. Pick 3072 bits (128-bit security) for data that must stay private
    beyond 2030 or where policy requires 128-bit security; it costs about 3x
    more per exponentiation and 1.5x more bytes per ciphertext, while packing
    carries 1.5x more values per ciphertext.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import ConfigError, DecodeError, IntegrityError
from protocols.paillier.raw import PrivateKey, PublicKey

__all__ = [
    "DEFAULT_KEY_BITS",
    "MIN_KEY_BITS",
    "Advert",
    "generate_keypair",
    "make_advert",
    "open_private_key",
    "parse_advert",
    "public_key_digest",
    "seal_private_key",
    "sign_ack",
    "sign_ciphertexts",
    "sign_public_key",
    "sign_survivors",
    "verify_ack",
    "verify_ciphertexts",
    "verify_public_key",
    "verify_survivors",
]

DEFAULT_KEY_BITS = 2048
"""NIST SP 800-57: ~112-bit security, acceptable through 2030 (see the module Notes)."""
MIN_KEY_BITS = 256
"""Below this phe's generator is unreliable; anything under 2048 bits is for tests only."""

_ADVERT = struct.Struct(">QQ32s64s")
_DOMAIN = b"securefedrec/paillier/v1/"
_NONCE_BYTES = 12


def generate_keypair(key_bits: int = DEFAULT_KEY_BITS) -> PrivateKey:
    """A fresh Paillier key pair of ``key_bits`` bits from ``phe.paillier.generate_paillier_keypair``.

    Raises:
        ConfigError: ``key_bits`` below :data:`MIN_KEY_BITS` or odd.
        ImportError: phe is not installed (``pip install securefedrec[paillier]``).
    """
    if key_bits < MIN_KEY_BITS or key_bits % 2:
        raise ConfigError(f"key_bits must be an even number >= {MIN_KEY_BITS}, got {key_bits}")
    try:
        from phe import paillier
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Paillier key generation needs phe: pip install securefedrec[paillier]") from exc
    public, private = paillier.generate_paillier_keypair(n_length=key_bits)
    key = PrivateKey(PublicKey(public.n), private.p, private.q)
    if key.public.bits != key_bits:
        raise ConfigError(f"phe returned a {key.public.bits}-bit modulus for key_bits={key_bits}")
    return key


def public_key_digest(public: PublicKey) -> bytes:
    """SHA-256 of ``n`` (fixed width), what acknowledgements sign."""
    return hashlib.sha256(public.n_bytes()).digest()


@dataclass(frozen=True)
class Advert:
    """A client's signed ephemeral X25519 key for one round."""

    client_id: int
    round_id: int
    x25519: bytes


def _raw(public: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_advert(
    identity: Ed25519PrivateKey, client_id: int, round_id: int, ephemeral: X25519PrivateKey | None = None
) -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key and its signed advert payload ``id | round | pub | sig``.

    ``ephemeral`` injects the X25519 key (a party that must rebuild its state, e.g. a
    Flower node between messages, derives it from a secret it keeps); default: a fresh one.
    """
    if ephemeral is None:
        ephemeral = X25519PrivateKey.generate()
    pub = _raw(ephemeral.public_key())
    body = struct.pack(">QQ", client_id, round_id) + pub
    return ephemeral, body + identity.sign(_DOMAIN + b"advert" + body)


def parse_advert(payload: bytes, identities: dict[int, Ed25519PublicKey], round_id: int) -> Advert:
    """Check an advert's length, round and signature against the sender's identity key.

    Raises:
        DecodeError: wrong length or round. IntegrityError: unknown sender or bad signature.
    """
    if len(payload) != _ADVERT.size:
        raise DecodeError(f"advert of {len(payload)} bytes, expected {_ADVERT.size}")
    cid, rid, pub, sig = _ADVERT.unpack(payload)
    if rid != round_id:
        raise DecodeError(f"advert of client {cid} is for round {rid}, this is round {round_id}")
    key = identities.get(cid)
    if key is None:
        raise IntegrityError(f"round {round_id}: advert from unenrolled client {cid}")
    try:
        key.verify(sig, _DOMAIN + b"advert" + payload[: _ADVERT.size - 64])
    except InvalidSignature:
        raise IntegrityError(f"round {round_id}: advert of client {cid} failed authentication") from None
    return Advert(client_id=cid, round_id=rid, x25519=pub)


def _pairwise_key(own: X25519PrivateKey, peer: bytes, round_id: int, holder: int, recipient: int) -> bytes:
    """HKDF-SHA256 of the X25519 shared secret, bound to the round and both ids.

    Raises:
        IntegrityError: the peer's key is malformed or of low order (RFC 7748 section 6.1:
            the shared secret is all zeros), so a server cannot force a known key.
    """
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        raise IntegrityError(
            f"round {round_id}: key transport {holder} -> {recipient}: the peer's advertised X25519 key "
            "is invalid or of low order"
        ) from None
    info = _DOMAIN + b"key-transport" + struct.pack(">QQQ", round_id, holder, recipient)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _factor_bytes(key: PrivateKey) -> int:
    return (key.public.bits // 2 + 8 + 7) // 8


def seal_private_key(
    key: PrivateKey, own: X25519PrivateKey, peer: Advert, round_id: int, holder: int
) -> bytes:
    """``nonce | AES-GCM(p || q)`` for ``peer``, bound to the round, both ids and ``n``."""
    width = _factor_bytes(key)
    plaintext = int(key.p).to_bytes(width, "big") + int(key.q).to_bytes(width, "big")
    aad = struct.pack(">QQQ", round_id, holder, peer.client_id) + key.public.n_bytes()
    nonce = os.urandom(_NONCE_BYTES)
    aead = AESGCM(_pairwise_key(own, peer.x25519, round_id, holder, peer.client_id))
    return nonce + aead.encrypt(nonce, plaintext, aad)


def open_private_key(
    sealed: bytes, public: PublicKey, own: X25519PrivateKey, holder: Advert, round_id: int, recipient: int
) -> PrivateKey:
    """Inverse of :func:`seal_private_key`; checks the tag and that ``p q = n``.

    Raises:
        IntegrityError: authentication failed or the factors do not match ``n``.
    """
    aad = struct.pack(">QQQ", round_id, holder.client_id, recipient) + public.n_bytes()
    aead = AESGCM(_pairwise_key(own, holder.x25519, round_id, holder.client_id, recipient))
    try:
        plaintext = aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce
        raise IntegrityError(
            f"round {round_id}: private key from client {holder.client_id} to {recipient} "
            "failed authentication"
        ) from None
    half = len(plaintext) // 2
    try:
        return PrivateKey(
            public, int.from_bytes(plaintext[:half], "big"), int.from_bytes(plaintext[half:], "big")
        )
    except ConfigError:
        raise IntegrityError(
            f"round {round_id}: private key from client {holder.client_id} does not match its public key"
        ) from None


def sign_public_key(identity: Ed25519PrivateKey, public: PublicKey, round_id: int, holder: int) -> bytes:
    """The key holder's signature over ``n`` for this round."""
    return identity.sign(_DOMAIN + b"public-key" + struct.pack(">QQ", round_id, holder) + public.n_bytes())


def verify_public_key(
    key: Ed25519PublicKey, signature: bytes, public: PublicKey, round_id: int, holder: int
) -> None:
    """Raise :class:`IntegrityError` unless ``signature`` is the holder's over ``n``."""
    try:
        key.verify(
            signature, _DOMAIN + b"public-key" + struct.pack(">QQ", round_id, holder) + public.n_bytes()
        )
    except InvalidSignature:
        raise IntegrityError(
            f"round {round_id}: public key of holder {holder} failed authentication"
        ) from None


def sign_ack(identity: Ed25519PrivateKey, public: PublicKey, round_id: int, client_id: int) -> bytes:
    """A client's signature saying it holds the key pair of ``n`` in this round."""
    return identity.sign(
        _DOMAIN + b"ack" + struct.pack(">QQ", round_id, client_id) + public_key_digest(public)
    )


def verify_ack(
    key: Ed25519PublicKey, signature: bytes, public: PublicKey, round_id: int, client_id: int
) -> None:
    """Raise :class:`IntegrityError` unless ``signature`` is a valid acknowledgement."""
    try:
        key.verify(
            signature, _DOMAIN + b"ack" + struct.pack(">QQ", round_id, client_id) + public_key_digest(public)
        )
    except InvalidSignature:
        raise IntegrityError(f"round {round_id}: key acknowledgement of client {client_id} failed") from None


def _ciphertexts_statement(round_id: int, client_id: int, block: bytes) -> bytes:
    return _DOMAIN + b"ciphertexts" + struct.pack(">QQ", round_id, client_id) + hashlib.sha256(block).digest()


def sign_ciphertexts(identity: Ed25519PrivateKey, round_id: int, client_id: int, block: bytes) -> bytes:
    """A client's signature over its round, its id and ``SHA-256`` of its ciphertext block."""
    return identity.sign(_ciphertexts_statement(round_id, client_id, block))


def verify_ciphertexts(
    key: Ed25519PublicKey, signature: bytes, round_id: int, client_id: int, block: bytes, who: str
) -> None:
    """Raise :class:`IntegrityError` (``who`` names the checker) unless ``signature`` signs ``block``."""
    try:
        key.verify(signature, _ciphertexts_statement(round_id, client_id, block))
    except InvalidSignature:
        raise IntegrityError(
            f"round {round_id}: {who}: the ciphertexts of client {client_id} failed authentication "
            "(altered, substituted or from another round)"
        ) from None


def _survivors_statement(round_id: int, survivors: tuple[int, ...]) -> bytes:
    return (
        _DOMAIN + b"consistency" + struct.pack(f">QI{len(survivors)}Q", round_id, len(survivors), *survivors)
    )


def sign_survivors(identity: Ed25519PrivateKey, round_id: int, survivors: tuple[int, ...]) -> bytes:
    """A client's consistency signature over the round and the sorted survivor set (malicious model)."""
    return identity.sign(_survivors_statement(round_id, survivors))


def verify_survivors(
    key: Ed25519PublicKey, signature: bytes, round_id: int, survivors: tuple[int, ...], signer: int, who: str
) -> None:
    """Raise :class:`IntegrityError` unless ``signature`` is ``signer``'s over (round, ``survivors``)."""
    try:
        key.verify(signature, _survivors_statement(round_id, survivors))
    except InvalidSignature:
        raise IntegrityError(
            f"round {round_id}: {who}: the consistency signature of client {signer} does not sign "
            f"this survivor set of {len(survivors)} clients"
        ) from None

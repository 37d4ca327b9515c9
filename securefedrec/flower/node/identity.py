"""A node's long-term signing keys and the out-of-band PKI (malicious-server model, Paillier)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefedrec.errors import ConfigError

__all__ = ["Identity", "load_identity", "signing_key"]


@dataclass(frozen=True)
class Identity:
    """A node's long-term signing key and the PKI (malicious-server model).

    Attributes:
        keys: hosted client id -> its Ed25519 private key.
        pki: every client id -> its raw 32-byte Ed25519 public key, distributed out of band
            (a PKI relayed by the server would let a malicious server substitute keys).
    """

    keys: dict[int, Ed25519PrivateKey]
    pki: dict[int, bytes]


def load_identity(node_config: Mapping[str, Any]) -> Identity | None:
    """Read ``identity-key`` (JSON ``{client id: hex private key}``) and ``pki`` (JSON ``{client id: hex
    public key}``) named by the node config; ``None`` when neither is set.

    Raises:
        ConfigError: only one of them is set, a file is unreadable, or a key is malformed.
    """
    key_path, pki_path = node_config.get("identity-key"), node_config.get("pki")
    if key_path is None and pki_path is None:
        return None
    if not isinstance(key_path, str) or not isinstance(pki_path, str):
        raise ConfigError("node config: the malicious model needs both identity-key and pki (file paths)")
    try:
        raw_keys = json.loads(Path(key_path).read_text())
        raw_pki = json.loads(Path(pki_path).read_text())
        keys = {int(c): Ed25519PrivateKey.from_private_bytes(bytes.fromhex(h)) for c, h in raw_keys.items()}
        pki = {int(c): bytes.fromhex(h) for c, h in raw_pki.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"node config: cannot read identity-key {key_path} / pki {pki_path}: {exc}") from None
    if any(len(v) != 32 for v in pki.values()):
        raise ConfigError(f"node config: {pki_path}: every public key must be 32 bytes (64 hex digits)")
    return Identity(keys, pki)


def signing_key(identity: Identity, cid: int, where: str) -> Ed25519PrivateKey:
    """Client ``cid``'s private identity key.

    Raises:
        ConfigError: ``identity-key`` holds no key for ``cid``.
    """
    if cid not in identity.keys:
        raise ConfigError(f"{where}: identity-key holds no key for client {cid}")
    return identity.keys[cid]

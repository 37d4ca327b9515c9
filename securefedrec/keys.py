"""``securefedrec keys``: the long-term identity keys of a Flower deployment's clients.

The malicious-server model (the deployment default) signs every client's key
advertisement with the client's long-term Ed25519 key, and every client checks
its peers' signatures against a PKI it got out of band. A SuperNode reads two
files named in its node config (:func:`securefedrec.flower.node.load_identity`):

- ``identity-key``: JSON ``{client id: hex raw Ed25519 private key}`` for the
  clients that node hosts (client ``c`` lives on partition ``c % nodes``);
- ``pki``: JSON ``{client id: hex raw Ed25519 public key}`` for every client.

This command writes one identity file per node and the common PKI. Private
keys come from the operating system's CSPRNG and are written with mode 0600;
existing files are never overwritten.

Notes:
    Who distributes the PKI is the trust anchor of the malicious model: a server
    that could hand out its own PKI could impersonate every client to every
    other (key substitution, then it unmasks each input). Copy ``pki.json`` to
    the nodes over a channel the server does not control, and each
    ``identity-N.json`` only to node N.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from securefedrec.cli import Command
from securefedrec.errors import ConfigError

__all__ = ["COMMAND", "write_identities"]


def write_identities(directory: str | os.PathLike[str], clients: int, nodes: int) -> dict[str, Path]:
    """Write ``pki.json`` and ``identity-{p}.json`` for ``p < nodes`` under ``directory``.

    Returns:
        ``{"pki": path, "identity-0": path, ...}``.

    Raises:
        ConfigError: ``clients`` or ``nodes`` below 1, more nodes than clients, or a file
            that already exists (keys are never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if clients < 1 or nodes < 1:
        raise ConfigError(f"--clients and --nodes must be >= 1, got {clients} and {nodes}")
    if nodes > clients:
        raise ConfigError(f"--nodes {nodes} is more than --clients {clients}: a node would host no client")
    out = Path(directory)
    paths = {"pki": out / "pki.json", **{f"identity-{p}": out / f"identity-{p}.json" for p in range(nodes)}}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: exists; keys are never overwritten (choose another --out)")
    raw = serialization.Encoding.Raw
    keys = {c: Ed25519PrivateKey.generate() for c in range(clients)}
    private = {c: k.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()).hex()
               for c, k in keys.items()}
    public = {c: k.public_key().public_bytes(raw, serialization.PublicFormat.Raw).hex()
              for c, k in keys.items()}
    out.mkdir(parents=True, exist_ok=True)
    for p in range(nodes):
        hosted = {c: h for c, h in private.items() if c % nodes == p}
        _write_private(paths[f"identity-{p}"], json.dumps(hosted))
    paths["pki"].write_text(json.dumps(public))
    return paths


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (never a moment with wider permissions)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, required=True,
                        help="clients of the run (silos with silos=S, else users)")
    parser.add_argument("--nodes", type=int, required=True, help="SuperNodes (num-partitions)")
    parser.add_argument("--out", type=Path, default=Path("keys"), help="folder to write (default keys/)")


def _run(args: argparse.Namespace) -> int:
    paths = write_identities(args.out, args.clients, args.nodes)
    print(f"wrote {paths['pki']} (every node) and {args.nodes} identity files; node p's node config: "
          f"identity-key='{args.out}/identity-p.json' pki='{paths['pki']}'")
    return 0


COMMAND = Command(help="write the Ed25519 identity keys and PKI of a Flower deployment's clients",
                  configure=_configure, run=_run)
"""Registered under ``securefedrec.commands`` as ``keys``."""

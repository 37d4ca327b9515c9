"""``securefedrec keys``: identity files a SuperNode can load, private keys owner-only, never overwritten."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securefedrec.cli import main
from securefedrec.errors import ConfigError
from securefedrec.flower import load_identity
from securefedrec.keys import COMMAND, write_identities


def test_each_node_loads_its_own_clients_keys_and_every_public_key(tmp_path: Path) -> None:
    paths = write_identities(tmp_path, clients=7, nodes=3)
    for p in range(3):
        identity = load_identity({"identity-key": str(paths[f"identity-{p}"]), "pki": str(paths["pki"])})
        assert identity is not None
        assert sorted(identity.keys) == [c for c in range(7) if c % 3 == p]
        assert sorted(identity.pki) == list(range(7))
        for c, key in identity.keys.items():  # a signature of the private key verifies under the PKI entry
            Ed25519PublicKey.from_public_bytes(identity.pki[c]).verify(key.sign(b"advert"), b"advert")
        assert stat.S_IMODE(paths[f"identity-{p}"].stat().st_mode) == 0o600
    assert len(set(json.loads(paths["pki"].read_text()).values())) == 7  # fresh keys, none repeated


def test_keys_are_never_overwritten_and_bad_counts_refused(tmp_path: Path) -> None:
    write_identities(tmp_path, clients=2, nodes=1)
    before = (tmp_path / "identity-0.json").read_bytes()
    with pytest.raises(ConfigError, match="exists; keys are never overwritten"):
        write_identities(tmp_path, clients=2, nodes=1)
    assert (tmp_path / "identity-0.json").read_bytes() == before
    with pytest.raises(ConfigError, match="more than --clients"):
        write_identities(tmp_path / "b", clients=2, nodes=3)
    with pytest.raises(ConfigError, match=">= 1"):
        write_identities(tmp_path / "c", clients=0, nodes=1)


def test_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("securefedrec.cli.installed_commands", lambda: {"keys": COMMAND})
    assert main(["keys", "--clients", "4", "--nodes", "2", "--out", str(tmp_path / "k")]) == 0
    written = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert written == ["identity-0.json", "identity-1.json", "pki.json"]
    assert main(["keys", "--clients", "4", "--nodes", "2", "--out", str(tmp_path / "k")]) == 2
    assert capsys.readouterr().err.count("\n") == 1

"""The lies family: a server that lies in each field it sends reveals no input (issue 14)."""

from __future__ import annotations

import pytest

from attacks.malicious.secagg_lies import LIES, TrustingClient, run_lie
from securefedrec.errors import ConfigError


def test_split_view_with_a_lowered_threshold_reveals_nothing() -> None:
    """The auditor's attack: threshold and t' lowered to 1, then a split view of the survivors.

    Against the client that takes t' from the Setup it unmasks the victim (so this test can
    fail); the client that computes t' itself refuses the setup and nothing is revealed.
    """
    trusting = run_lie("split-view-low-threshold", client_class=TrustingClient, seed=3)
    assert trusting.revealed == 1 and "unmasked" in trusting.notes[-1]
    assert not trusting.aborted
    out = run_lie("split-view-low-threshold", seed=3)
    assert out.revealed == 0
    assert out.aborted == list(range(1, 7))  # every client refused the setup
    assert all(e.startswith("IntegrityError") and "setup: threshold 1 is below" in e for e in out.errors)


def test_a_lowered_share_threshold_alone_unmasks_a_trusting_client_only() -> None:
    assert run_lie("share-threshold", client_class=TrustingClient).revealed == 1
    out = run_lie("share-threshold")
    assert out.revealed == 0 and len(out.aborted) == 6
    assert "share threshold 1 is below 4" in out.errors[0]


@pytest.mark.parametrize("lie", LIES)
def test_every_lie_reveals_nothing_and_is_refused(lie: str) -> None:
    out = run_lie(lie, clients=6)
    assert out.revealed == 0, out.notes
    assert out.aborted, f"no client noticed the lie {lie!r}"
    assert all(e.split(":")[0] in ("IntegrityError", "StageError") for e in out.errors)


@pytest.mark.parametrize("lie", ["degree", "graph-seed", "ring-bits", "clip-range", "threshold"])
def test_setup_lies_are_refused_by_every_client_before_any_key_exists(lie: str) -> None:
    out = run_lie(lie, clients=5)
    assert out.aborted == list(range(1, 6))
    assert all(", setup: " in e for e in out.errors)


def test_unknown_lie_and_too_few_clients() -> None:
    with pytest.raises(ConfigError, match="choose one of: split-view-low-threshold"):
        run_lie("nope")
    with pytest.raises(ConfigError, match=">= 4 clients"):
        run_lie("degree", clients=3)


def test_the_harness_runs_the_lies_by_name_and_lists_the_inputs_revealed() -> None:
    from attacks import MaliciousServerAttack
    from tests.attacks.conftest import config

    chosen = ("split-view-low-threshold", "share-threshold", "drop-claim")
    res = MaliciousServerAttack(clients=6, scenarios=chosen).run(config("secagg"))
    assert res.value == 0 and not res.success
    assert res.details["inputs_revealed"] == dict.fromkeys(chosen, 0)
    # against the client that trusts the Setup, both threshold lies unmask the victim
    assert res.baseline >= 2
    trusting = res.details["semi_honest"]
    assert trusting["share-threshold"]["revealed"] == 1
    assert trusting["share-threshold"]["model"] == "trusting client"
    assert "for the lies" in res.details["baseline_is"]
    with pytest.raises(ConfigError, match="does not apply to protocol 'secagg'"):
        MaliciousServerAttack(scenarios=("threshold-lie",)).run(config("secagg"))

"""malicious-server: the signed, consistency-checked protocol reveals nothing; the semi-honest one leaks."""

from __future__ import annotations

import pytest

from attacks import MaliciousServerAttack
from attacks.malicious.secagg import SCENARIOS, run_scenario
from securefedrec.errors import ConfigError
from tests.attacks.conftest import config


@pytest.mark.parametrize("scenario", ["drop-claim", "key-substitution", "share-tampering"])
def test_malicious_model_reveals_nothing_and_clients_abort(scenario: str) -> None:
    out = run_scenario(scenario, clients=7, threshold=4, degree=None, malicious=True)
    assert out.revealed == 0
    assert out.aborted and all("IntegrityError" in e for e in out.errors)


def test_split_view_reveals_nothing_with_a_majority_threshold() -> None:
    for malicious in (True, False):
        out = run_scenario("split-view", clients=8, threshold=5, degree=None, malicious=malicious)
        assert out.revealed == 0


def test_semi_honest_leaks_to_key_substitution_and_split_view() -> None:
    out = run_scenario("key-substitution", clients=6, threshold=3, degree=None, malicious=False)
    assert out.revealed == 6
    out = run_scenario("split-view", clients=6, threshold=3, degree=None, malicious=False)
    assert out.revealed == 1 and "unmasked" in out.notes[-1]


def test_split_view_fails_in_the_malicious_model_at_half_threshold() -> None:
    out = run_scenario("split-view", clients=8, threshold=4, degree=None, malicious=True)
    assert out.revealed == 0


def test_secagg_plus_sparse_graph_resists_split_view() -> None:
    out = run_scenario("split-view", clients=12, threshold=6, degree=4, malicious=True)
    assert out.revealed == 0


def test_attack_report() -> None:
    res = MaliciousServerAttack(clients=9).run(config("secagg+", threshold_fraction=0.6))
    assert res.value == 0 and not res.success and res.baseline > 0
    assert set(res.details["scenarios"]) == set(SCENARIOS)
    plain = MaliciousServerAttack().run(config("plaintext"))
    assert plain.success
    with pytest.raises(ConfigError, match=r"does not apply to protocol 'secagg\+'"):
        MaliciousServerAttack(scenarios=("single-ciphertext",)).run(config("secagg+"))


@pytest.mark.parametrize(("clients", "degree"), [(11, None), (20, 4), (40, 8)])
def test_one_corrupted_holder_defeats_a_bare_majority_but_not_the_corruption_aware_threshold(
        clients: int, degree: int | None) -> None:
    """A split view helped by one client the server controls (it signs both views, gives both shares).

    With t' a bare majority of an odd neighbourhood (clients assuming no corrupted holder) the
    server unmasks the victim, on the complete graph and on SecAgg+'s sparse one; with t' above
    half of the holders plus the one the 5 % rate allows, the honest clients refuse and nothing
    is revealed.
    """
    bare = run_scenario("split-view-colluder", clients=clients, threshold=clients // 2, degree=degree,
                        malicious=True, corruption_rate=0.0)
    assert bare.revealed == 1 and "unmasked" in " ".join(bare.notes)
    guarded = run_scenario("split-view-colluder", clients=clients, threshold=clients // 2, degree=degree,
                           malicious=True)
    assert guarded.revealed == 0
    assert guarded.aborted and all("IntegrityError" in e for e in guarded.errors)

"""malicious-server against packed Paillier: the malicious model reveals nothing; honest-but-curious leaks."""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("gmpy2")

from attacks import MaliciousServerAttack
from attacks.malicious import paillier as mp
from attacks.malicious import paillier_round
from attacks.malicious.paillier import LIE_SCENARIOS, SCENARIOS, run_scenario
from protocols.paillier import PrivateKey, generate_keypair
from protocols.paillier import client as paillier_client
from protocols.paillier import keys as keymod
from protocols.paillier import server as paillier_server
from securefedrec.errors import ConfigError
from tests.attacks.conftest import config
from tests.protocols.test_paillier import small_key


@functools.cache
def weak_key() -> PrivateKey:
    return generate_keypair(256)


LEAKS_WHEN_HONEST_BUT_CURIOUS = ("single-ciphertext", "under-threshold", "split-view", "ciphertext-replay")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_malicious_model_reveals_nothing_and_clients_abort(scenario: str) -> None:
    out = run_scenario(scenario, clients=8, threshold=4, malicious=True, key=small_key())
    assert out.revealed == 0
    assert out.aborted and out.errors and all(e.startswith("IntegrityError: round ") for e in out.errors)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_honest_but_curious_baseline(scenario: str) -> None:
    out = run_scenario(scenario, clients=8, threshold=4, malicious=False, key=small_key())
    if scenario in LEAKS_WHEN_HONEST_BUT_CURIOUS:  # the victim's input, recovered to the quantization step
        assert out.revealed == 1 and "client 8's input recovered" in out.notes[-1]
    else:  # signed adverts, the holder's signature over n and the sealed key's AEAD are in both models
        assert out.revealed == 0 and out.aborted


@pytest.mark.parametrize("malicious", [True, False])
@pytest.mark.parametrize("scenario", LIE_SCENARIOS)
def test_each_lie_about_a_clients_own_parameter_reveals_nothing(scenario: str, malicious: bool) -> None:
    out = run_scenario(scenario, clients=8, threshold=4, malicious=malicious, key=small_key(),
                       weak_key=weak_key())
    assert out.revealed == 0
    assert out.aborted and all(e.startswith("IntegrityError: round ") for e in out.errors)


@pytest.mark.parametrize(("scenario", "malicious", "revealed"), [
    ("threshold-lie", False, 1),  # the decryptor took threshold 1 from the caller
    ("sybil-key-holder", True, 7), ("sybil-key-holder", False, 7),  # every client but the one replaced
    ("weak-key", True, 7), ("weak-key", False, 7),  # every recipient of the 256-bit key
])
def test_without_their_own_config_clients_fall_for_the_lie(scenario: str, malicious: bool,
                                                           revealed: int) -> None:
    """Clients that take the parameter from the caller fall for it: the check is what stops the lie."""
    out = run_scenario(scenario, clients=8, threshold=4, malicious=malicious, key=small_key(),
                       weak_key=weak_key(), own_config=False)
    assert out.revealed == revealed and "input recovered" in out.notes[-1]


def test_a_layout_lie_is_refused_and_reveals_nothing_even_when_taken() -> None:
    out = run_scenario("layout-lie", clients=6, threshold=3, malicious=False, key=small_key())
    assert sorted(out.aborted) == [1, 2, 3, 4, 5, 6] and out.revealed == 0
    bare = run_scenario("layout-lie", clients=6, threshold=3, malicious=False, key=small_key(),
                        own_config=False)
    assert bare.revealed == 0 and "client 2 told two more value bits: encrypted" in bare.notes


def test_split_view_with_a_threshold_below_half_still_fails() -> None:
    out = run_scenario("split-view", clients=10, threshold=2, malicious=True, key=small_key())
    assert out.revealed == 0 and "sums obtained: s1" in out.notes
    assert any("t' is 6" in e for e in out.errors)


def test_without_the_majority_t_prime_split_view_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The strict majority is what stops the split view: with t' = n / 2 two halves each sign one set."""

    def half(n: int) -> int:
        return n // 2

    monkeypatch.setattr(paillier_client, "consistency_threshold", half)  # the clients' t'
    monkeypatch.setattr(paillier_server, "consistency_threshold", half)  # the server's
    monkeypatch.setattr(mp, "consistency_threshold", half)  # the attack's report
    monkeypatch.setattr(paillier_round, "consistency_threshold", half)  # the attacker's round
    out = run_scenario("split-view", clients=8, threshold=4, malicious=True, key=small_key())
    assert out.revealed == 1


def test_without_advert_signatures_the_key_is_stolen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The advert signature is what stops the man in the middle on the sealed key, in both models."""

    def unchecked(payload: bytes, identities: object, round_id: int) -> keymod.Advert:
        cid, rid, pub, _ = keymod._ADVERT.unpack(payload)
        return keymod.Advert(client_id=cid, round_id=rid, x25519=pub)

    monkeypatch.setattr(keymod, "parse_advert", unchecked)
    for malicious in (True, False):
        out = run_scenario("key-substitution", clients=5, threshold=3, malicious=malicious, key=small_key())
        assert out.revealed == 5


def test_attack_report_for_paillier() -> None:
    res = MaliciousServerAttack(clients=8).run(
        config("paillier", threshold_fraction=0.5), aggregator_options={"keypair": small_key()}
    )
    assert res.protocol == "paillier" and res.value == 0 and not res.success
    assert res.baseline == len(LEAKS_WHEN_HONEST_BUT_CURIOUS)
    assert set(res.details["scenarios"]) == set(SCENARIOS)
    assert res.details["consistency_threshold"] == 5 and res.details["threshold"] == 4
    honest = res.details["semi_honest"]
    assert {s for s, o in honest.items() if o["revealed"]} == set(LEAKS_WHEN_HONEST_BUT_CURIOUS)
    assert honest["split-view"]["model"] == "honest-but-curious"
    assert res.details["inputs_revealed"] == dict.fromkeys(SCENARIOS, 0)
    with pytest.raises(ConfigError, match="does not apply to protocol 'paillier'"):
        MaliciousServerAttack(scenarios=("drop-claim",)).run(config("paillier"))
    with pytest.raises(ConfigError, match="does not apply to protocol 'paillier'"):
        MaliciousServerAttack(scenarios=("share-threshold",)).run(config("paillier"))


def test_the_harness_runs_a_paillier_lie_by_name() -> None:
    res = MaliciousServerAttack(clients=5, scenarios=("threshold-lie",)).run(
        config("paillier", threshold_fraction=0.5), aggregator_options={"keypair": small_key()})
    assert set(res.details["scenarios"]) == {"threshold-lie"}
    assert res.details["inputs_revealed"] == {"threshold-lie": 0} and res.value == 0
    with pytest.raises(ConfigError, match="unknown scenario"):
        MaliciousServerAttack(scenarios=("nope",))


def test_run_scenario_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        run_scenario("drop-claim", clients=8, threshold=4, malicious=True, key=small_key())
    with pytest.raises(ConfigError, match=">= 4 clients"):
        run_scenario("split-view", clients=3, threshold=2, malicious=True, key=small_key())

"""malicious-server against packed Paillier: the malicious model reveals nothing; honest-but-curious leaks."""

from __future__ import annotations

import pytest

pytest.importorskip("gmpy2")

from attacks import MaliciousServerAttack
from attacks import malicious_paillier as mp
from attacks.malicious_paillier import SCENARIOS, run_scenario
from protocols.paillier import aggregator as pa
from protocols.paillier import keys as keymod
from securefedrec.errors import ConfigError
from tests.attacks.conftest import config
from tests.protocols.test_paillier import small_key

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


def test_split_view_with_a_threshold_below_half_still_fails() -> None:
    out = run_scenario("split-view", clients=10, threshold=2, malicious=True, key=small_key())
    assert out.revealed == 0 and "sums obtained: s1" in out.notes
    assert any("t' is 6" in e for e in out.errors)


def test_without_the_majority_t_prime_split_view_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The strict majority is what stops the split view: with t' = n / 2 two halves each sign one set."""

    def half(n: int) -> int:
        return n // 2

    monkeypatch.setattr(pa, "consistency_threshold", half)
    monkeypatch.setattr(mp, "consistency_threshold", half)
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
    with pytest.raises(ConfigError, match="does not apply to protocol 'paillier'"):
        MaliciousServerAttack(scenarios=("drop-claim",)).run(config("paillier"))
    with pytest.raises(ConfigError, match="unknown scenario"):
        MaliciousServerAttack(scenarios=("nope",))


def test_run_scenario_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        run_scenario("drop-claim", clients=8, threshold=4, malicious=True, key=small_key())
    with pytest.raises(ConfigError, match=">= 4 clients"):
        run_scenario("split-view", clients=3, threshold=2, malicious=True, key=small_key())

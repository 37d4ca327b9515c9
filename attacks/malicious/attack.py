"""``malicious-server``: every malicious-server scenario against the configured protocol, in one report.

The scenario families live beside this module: :mod:`.secagg` (deviations from
SecAgg / SecAgg+), :mod:`.secagg_lies` (one lie per field a SecAgg server
sends), :mod:`.paillier` (deviations from packed Paillier and its lies); their
names and the shared outcome type are in :mod:`.outcomes`.
"""

from __future__ import annotations

import math
from typing import ClassVar

from attacks.base import Attack, AttackResult, Target
from attacks.malicious import secagg, secagg_lies
from attacks.malicious.outcomes import (
    PAILLIER_LIES,
    PAILLIER_SCENARIOS,
    SECAGG_LIES,
    SECAGG_SCENARIOS,
    ScenarioOutcome,
    summarize,
)
from protocols import aggregator_class, protocols_where
from protocols.secagg import SecAggClient, choose_degree, effective_degree, share_threshold
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError

__all__ = ["MaliciousServerAttack"]

_SECAGG_ALL = (*SECAGG_SCENARIOS, *SECAGG_LIES)
_PAILLIER_ALL = (*PAILLIER_SCENARIOS, *PAILLIER_LIES)


class MaliciousServerAttack(Attack):
    """All malicious-server scenarios against the configured SecAgg / SecAgg+ or packed-Paillier round.

    Args:
        clients: clients in the attacked round (the threshold is
            ``ceil(threshold_fraction * clients)`` from the configuration).
        scenarios: which scenarios to run, by name: any of
            :data:`~attacks.malicious.outcomes.SECAGG_SCENARIOS` and
            :data:`~attacks.malicious.outcomes.SECAGG_LIES` for SecAgg / SecAgg+, of
            :data:`~attacks.malicious.outcomes.PAILLIER_SCENARIOS` and
            :data:`~attacks.malicious.outcomes.PAILLIER_LIES` for Paillier. Default: the
            SecAgg scenarios, or every Paillier scenario and lie.
        margin, seed: see :class:`~attacks.base.Attack` (``margin`` is unused: any
            revealed secret is a success).

    The report's ``details`` list each scenario run (``scenarios``, against the defence;
    ``semi_honest``, against the baseline) and ``inputs_revealed`` (scenario -> inputs the
    server recovered against the defence).
    """

    name: ClassVar[str] = "malicious-server"
    metric: ClassVar[str] = "secrets_revealed"

    def __init__(self, *, clients: int = 10, scenarios: tuple[str, ...] | None = None,
                 margin: float = 0.0, seed: int = 0) -> None:
        super().__init__(margin=margin, seed=seed)
        known = tuple(dict.fromkeys((*_SECAGG_ALL, *_PAILLIER_ALL)))
        unknown = [s for s in scenarios or () if s not in known]
        if unknown:
            raise ConfigError(f"unknown scenario {unknown[0]!r}; choose from: {', '.join(known)}")
        if clients < 3:
            raise ConfigError(f"clients must be >= 3, got {clients}")
        self.clients = clients
        self.scenarios = None if scenarios is None else tuple(scenarios)

    def _scenarios(self, protocol: str, default: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
        if self.scenarios is None:
            return default
        wrong = [s for s in self.scenarios if s not in names]
        if wrong:
            raise ConfigError(f"scenario {wrong[0]!r} does not apply to protocol {protocol!r}; "
                              f"choose from: {', '.join(names)}")
        return self.scenarios

    def attack(self, config: ExperimentConfig, target: Target) -> AttackResult:
        """Run the scenarios against the malicious model and (baseline) the semi-honest model.

        For ``paillier`` the baseline is the honest-but-curious Paillier protocol and
        ``aggregator_options`` may give ``key_bits`` (default 512 here) or ``keypair``.
        The SecAgg lies run in a complete-graph round of ``clients`` clients (at least 4),
        with the pre-issue-14 trusting client as their baseline.
        """
        n = self.clients
        fed = config.federation
        name = fed.protocol
        threshold = max(1, math.ceil(fed.threshold_fraction * n))
        protocol = aggregator_class(name)
        if not protocol.secure:
            return self.result(config, n, n, True, note=f"{name}: the server reads every input; "
                               "no deviation is needed", clients=n)
        if protocol.homomorphic:
            from attacks.malicious.paillier import attack_details

            if n < 4:
                raise ConfigError(f"malicious-server against {name} needs clients >= 4, got {n}")
            scenarios = self._scenarios(name, PAILLIER_SCENARIOS, _PAILLIER_ALL)
            value, baseline, details = attack_details(
                n, fed.threshold_fraction, scenarios, target.aggregator_options, self.seed)
            return self.result(config, value, baseline, value > 0, **details)
        if not protocol.pairwise_masks:
            supported = protocols_where(lambda cls: cls.pairwise_masks or cls.homomorphic or not cls.secure)
            raise ConfigError(f"malicious-server drives the SecAgg or Paillier state machines; protocol "
                              f"{name!r} is not supported (choose {', '.join(supported)})")
        degree = None if not protocol.sparse_graph else (
            fed.neighbors if fed.neighbors is not None
            else choose_degree(n, corruption_rate=fed.corruption_rate))
        outcomes: list[ScenarioOutcome] = []
        ran = self._scenarios(config.federation.protocol, SECAGG_SCENARIOS, _SECAGG_ALL)
        lies_baseline = "; for the lies, the client that takes every parameter from the server's Setup"
        for scenario in ran:
            if scenario in SECAGG_LIES:
                if n < 4:
                    raise ConfigError(f"the SecAgg lies need clients >= 4, got {n}")
                for client_class in (SecAggClient, secagg_lies.TrustingClient):
                    outcomes.append(secagg_lies.run_lie(scenario, clients=n, seed=self.seed,
                                                        client_class=client_class))
                continue
            for malicious in (True, False):
                outcomes.append(secagg.run_scenario(scenario, clients=n, threshold=threshold, degree=degree,
                                                    malicious=malicious, seed=self.seed,
                                                    corruption_rate=fed.corruption_rate))
        summary = summarize(outcomes)
        return self.result(
            config, summary.value, summary.baseline, summary.value > 0, clients=n, threshold=threshold,
            share_threshold=share_threshold(threshold, n, effective_degree(n, degree), True,
                                            fed.corruption_rate),
            **summary.details,
            baseline_is="the same scenarios against the semi-honest protocol (no signatures, "
                        "no consistency round)" + (lies_baseline if set(ran) & set(SECAGG_LIES) else ""),
        )

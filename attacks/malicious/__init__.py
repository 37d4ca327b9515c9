"""``malicious-server``: a server that deviates from the protocol to recover one client's input.

:class:`~attacks.malicious.attack.MaliciousServerAttack` (registered as
``malicious-server``) runs the scenario families against the configured protocol:

- :mod:`.secagg`: deviations from SecAgg / SecAgg+ (drop claims, key substitution,
  share tampering, split views);
- :mod:`.secagg_lies`: one lie per field a SecAgg server sends;
- :mod:`.paillier`: deviations from packed Paillier and its lies (needs the
  ``securefedrec[paillier]`` extras, imported only when run).

Every family reports :class:`~attacks.malicious.outcomes.ScenarioOutcome` objects,
defined with every scenario name in :mod:`.outcomes`.
"""

from attacks.malicious.outcomes import (
    PAILLIER_LIES,
    PAILLIER_SCENARIOS,
    SECAGG_LIES,
    SECAGG_SCENARIOS,
    ScenarioOutcome,
    Summary,
    summarize,
)

__all__ = [
    "PAILLIER_LIES",
    "PAILLIER_SCENARIOS",
    "SECAGG_LIES",
    "SECAGG_SCENARIOS",
    "ScenarioOutcome",
    "Summary",
    "summarize",
]

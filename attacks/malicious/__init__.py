"""``malicious-server``: a server that deviates from the protocol to recover one client's input.

:class:`~attacks.malicious.attack.MaliciousServerAttack` (registered as
``malicious-server``) runs the scenario families against the configured protocol:

- :mod:`.secagg`: deviations from SecAgg / SecAgg+ (drop claims, key substitution,
  share tampering, split views);
- :mod:`.secagg_lies`: one lie per field a SecAgg server sends;
- :mod:`.paillier`: deviations from packed Paillier and its lies, on the attacker's
  round of :mod:`.paillier_round` (needs the ``securefedrec[paillier]`` extras,
  imported only when run).

Every family reports :class:`~attacks.malicious.outcomes.ScenarioOutcome` objects,
defined with every scenario name (``SECAGG_SCENARIOS``, ``SECAGG_LIES``,
``PAILLIER_SCENARIOS``, ``PAILLIER_LIES``) in :mod:`.outcomes`.
"""

from attacks.malicious.outcomes import ScenarioOutcome, Summary, summarize

__all__ = ["ScenarioOutcome", "Summary", "summarize"]

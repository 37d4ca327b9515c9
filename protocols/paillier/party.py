"""What both Paillier parties share: the round's encoding and slot layout, t', and the terminal state.

:func:`round_layout` and :func:`consistency_threshold` are computed by each party
from its own configuration; :class:`Party` and :func:`guarded` give client and
server the h11-style terminal error state (after any failure, every call refuses).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from protocols.base import RoundConfig
from protocols.encoding import FixedPoint
from protocols.errors import ConfigError, IntegrityError, SecureFedRecError
from protocols.paillier.packing import SlotLayout
from protocols.paillier.raw import PublicKey

__all__ = ["Party", "consistency_threshold", "guarded", "round_layout"]


def round_layout(n_clients: int, config: RoundConfig, public: PublicKey) -> tuple[FixedPoint, SlotLayout]:
    """The encoding and slot layout of a round with ``n_clients`` participants.

    Values use the same :class:`FixedPoint` as every other protocol (``value_bits``
    from the config, or the most that ``ring_bits`` allows for ``n`` clients), so
    results agree to the quantization step; a slot adds ``ceil(log2 n)`` bits.

    Raises:
        ConfigError: the layout cannot hold the sum (message says what to change), or the
            round asks for wrap-around, which packed slots cannot do.
    """
    if config.wrap:
        raise ConfigError(f"round {config.round_id}: paillier cannot wrap sums (RoundConfig.wrap): a slot "
                          "that overflows carries into its neighbour; its slots hold the exact sum "
                          "instead -- use q8/q16")
    fp = FixedPoint.for_sum(n_clients, config.clip_range, config.ring_bits, config.value_bits)
    return fp, SlotLayout.for_sum(n_clients, fp.value_bits, public.plaintext_bits)


def consistency_threshold(n_clients: int) -> int:
    """t': the consistency signatures a decryptor needs in the malicious-server model, ``n // 2 + 1``.

    ``n_clients`` is the number of clients the round was set up with (the same ``n``
    that sizes the slot layout, :func:`round_layout`), so every advertiser set is a
    subset of it and t' is a strict majority of the advertisers whatever advert list
    the server shows a client.

    Notes:
        The argument of :func:`protocols.secagg.share_threshold` in the malicious model
        (Bonawitz et al. 2017; Bell et al. 2020): every honest client signs at most one
        survivor set per round, and two sets of more than ``n / 2`` signers always
        share a client, so two *different* survivor sets can never both collect t'
        signatures. A server that wants the sums over S1 and S2 = S1 minus v (whose
        difference is v's input) from two decryptors therefore gets at most one. A
        smaller t' (e.g. ``threshold`` = n / 2) would let two disjoint halves each sign
        one set -- the split view that ``attacks.malicious.paillier`` runs.
    """
    if n_clients < 1:
        raise ConfigError(f"number of clients must be >= 1, got {n_clients}")
    return n_clients // 2 + 1


_P = ParamSpec("_P")
_R = TypeVar("_R")
PartyT = TypeVar("PartyT", bound="Party")


class Party:
    """Terminal error state shared by both parties (h11 style).

    After any exception leaves a stage, the party remembers it and refuses every
    further call with :class:`~protocols.errors.IntegrityError`; an exception that is
    not the project's own (``cryptography``, ``gmpy2``, ``struct``, numpy, ...) leaves
    as an :class:`~protocols.errors.IntegrityError` naming its type, so a malformed
    message can never surface as a foreign exception or leave a stage half open.
    """

    _failure: str | None = None

    def _who(self) -> str:
        raise NotImplementedError

    @property
    def failed(self) -> bool:
        """Whether a stage of this party failed: it then refuses every further call."""
        return self._failure is not None


def guarded(method: Callable[Concatenate[PartyT, _P], _R]) -> Callable[Concatenate[PartyT, _P], _R]:
    """Make ``method`` a stage of a :class:`Party`: refused after a failure, failures made terminal."""
    name = method.__name__

    @functools.wraps(method)
    def stage(self: PartyT, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._failure is not None:
            raise IntegrityError(
                f"{self._who()} refuses {name}: it failed earlier in this round ({self._failure}) "
                "and refuses every further call"
            )
        try:
            return method(self, *args, **kwargs)
        except SecureFedRecError as exc:
            self._failure = f"{type(exc).__name__} in {name}"
            raise
        except Exception as exc:  # anything foreign: a party never leaks it, nor stays open
            self._failure = f"{type(exc).__name__} in {name}"
            raise IntegrityError(
                f"{self._who()}: {name} refused a message that raised {type(exc).__name__}"
            ) from exc

    return stage

"""Opacus accountants by name (as ``opacus.accountants.registry``): ``--accountant rdp|prv``."""

from __future__ import annotations

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant

from securefedrec.errors import ConfigError

__all__ = ["ACCOUNTANTS", "make_accountant"]

ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
"""Accountant name -> Opacus accountant class."""


def make_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant by name (one of :data:`ACCOUNTANTS`)."""
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise ConfigError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}, got {name!r}") from None

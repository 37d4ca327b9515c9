"""Privacy accountants: they count rounds, report epsilon and stop a run before it overspends.

- :mod:`.base`: :class:`BudgetAccountant`, the history, the budget stop and the server's epsilon;
- :mod:`.gaussian`: :class:`PrivacyAccountant`, the distributed Gaussian accounted by Opacus;
- :mod:`.skellam`: :class:`SkellamAccountant`, the Skellam mechanism's RDP with Poisson subsampling;
- :mod:`.registry`: :data:`ACCOUNTANTS`, the Opacus accountants by name (``--accountant``).
"""

from securefedrec.privacy.accountants.base import BudgetAccountant
from securefedrec.privacy.accountants.gaussian import PrivacyAccountant, calibrate_noise_multiplier
from securefedrec.privacy.accountants.registry import ACCOUNTANTS, make_accountant
from securefedrec.privacy.accountants.skellam import (
    ORDERS,
    SkellamAccountant,
    calibrate_mu,
    poisson_subsampled_rdp,
    rdp_of,
    skellam_rdp,
)

__all__ = [
    "ACCOUNTANTS",
    "ORDERS",
    "BudgetAccountant",
    "PrivacyAccountant",
    "SkellamAccountant",
    "calibrate_mu",
    "calibrate_noise_multiplier",
    "make_accountant",
    "poisson_subsampled_rdp",
    "rdp_of",
    "skellam_rdp",
]

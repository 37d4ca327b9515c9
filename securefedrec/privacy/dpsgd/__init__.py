"""Record-level DP for cross-silo federation: each silo trains with Opacus DP-SGD (``--dp record``).

- :mod:`.silos`: :class:`SiloDPSGD`, the silos, their Opacus ``PrivacyEngine`` and accounting;
- :mod:`.model`: :class:`SiloMF` and :class:`SiloLoss`, one silo's torch model;
- :mod:`.state`: :class:`SiloState`, a silo between rounds, and its JSON form for checkpoints.
"""

from securefedrec.privacy.dpsgd.model import SiloLoss, SiloMF
from securefedrec.privacy.dpsgd.silos import GRAD_SAMPLE_MODES, SiloDPSGD, silo_groups
from securefedrec.privacy.dpsgd.state import SiloState

__all__ = ["GRAD_SAMPLE_MODES", "SiloDPSGD", "SiloLoss", "SiloMF", "SiloState", "silo_groups"]

from __future__ import annotations

from pathlib import Path

import pytest

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The shared MovieLens 100K folder; tests that need it skip when it is absent."""
    if not (ML100K / "u1.base").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K

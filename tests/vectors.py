"""Load known-answer vectors from tests/vectors/NAME.json for pytest.mark.parametrize.

Each file holds ``{"description": ..., "source": ..., "vectors": [{...}, ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTOR_DIR = Path(__file__).parent / "vectors"


def vectors(name: str) -> Any:
    """``pytest.mark.parametrize("vector", [...])`` over the vectors of tests/vectors/NAME.json."""
    data = json.loads((VECTOR_DIR / f"{name}.json").read_text())
    cases = data["vectors"]
    return pytest.mark.parametrize("vector", cases, ids=[f"{name}-{i}" for i in range(len(cases))])

"""Submodel rounds in the simulator: the same training as dense SecAgg, rows only on the wire."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.submodel import keep_probability
from securefedrec import ExperimentConfig, Simulation
from securefedrec.errors import ConfigError
from securefedrec.models.compressed import CompressedModel
from securefedrec.server.submodel import row_layout, submodel_inputs

SMALL = {"dataset": "synthetic", "synthetic_users": 40, "synthetic_items": 12,
         "synthetic_ratings_per_user": 6, "sample_rate": 0.5, "rounds": 2, "device": "cpu",
         "protocol": "secagg", "threat_model": "semi-honest", "seed": 3}


def _run(**extra: object) -> Simulation:
    sim = Simulation(ExperimentConfig(**{**SMALL, **extra}))
    for _ in range(SMALL["rounds"]):  # type: ignore[arg-type]
        sim.run_round()
    return sim


def test_submodel_training_equals_dense_secagg_when_every_true_row_is_kept() -> None:
    """12 items rated by ~16 of each round's ~20 clients: no row is thin, the sums agree to quantization."""
    dense = _run()
    sub = _run(submodel=True, item_epsilon=40.0)  # keep probability 1 - 4e-18: the true rows exactly
    assert keep_probability(40.0) > 1 - 1e-15
    np.testing.assert_allclose(sub.global_vec, dense.global_vec, rtol=0, atol=1e-3)
    rec, base = sub.rounds[-1], dense.rounds[-1]
    assert rec["item_epsilon"] == 40.0
    assert rec["rmse"] == pytest.approx(base["rmse"], abs=1e-4)
    assert rec["rows_reported"] <= 6  # its own rated items only (no false positives at this epsilon)
    assert rec["bytes_broadcast"] < base["bytes_broadcast"] / 2


@pytest.mark.parametrize("spec", ["int4", "prune:0.25+int8"])
def test_submodel_rounds_of_a_compressed_model_equal_its_dense_secagg_rounds(spec: str) -> None:
    """int8 / int4 and prune keep each item's row its own: the rows are the compressed vector's."""
    dense = _run(model_compression=spec)
    sub = _run(model_compression=spec, submodel=True, item_epsilon=40.0)
    assert isinstance(sub.model, CompressedModel)
    layout = row_layout(sub.model)
    kept = 9 if spec.startswith("prune") else 12  # prune: the 3 least popular items have no row
    assert layout.num_rows == kept and layout.width == 33 and layout.length == sub.model.length
    assert layout.shared.size == 1  # the global mean
    np.testing.assert_allclose(sub.global_vec, dense.global_vec, rtol=0, atol=1e-3)
    rec, base = sub.rounds[-1], dense.rounds[-1]
    assert rec["rmse"] == pytest.approx(base["rmse"], abs=1e-4)
    # each client downloads its rows as stored: 4 or 8 bits a value and a float16 scale a row
    bits = 4 if spec == "int4" else 8
    per_row = 33 * bits / 8 + 2
    row_bytes = rec["bytes_broadcast"] - rec["clients"] * sub.model.rows_bytes(0)
    assert row_bytes == pytest.approx(rec["clients"] * rec["rows_reported"] * per_row, abs=rec["clients"])
    assert rec["bytes_broadcast"] < base["bytes_broadcast"]


def test_submodel_refuses_a_model_compression_without_rows_of_its_own() -> None:
    sim = Simulation(ExperimentConfig(**{**SMALL, "model_compression": "mixed:2"}))
    with pytest.raises(ConfigError, match="narrower than the others"):
        row_layout(sim.model)
    sim = Simulation(ExperimentConfig(**{**SMALL, "model_compression": "qr:2"}))
    with pytest.raises(ConfigError, match="shared with other items"):
        row_layout(sim.model)


def test_a_small_item_epsilon_reports_many_rows_and_still_trains() -> None:
    sim = _run(submodel=True, item_epsilon=0.1)
    rec = sim.rounds[-1]
    assert not rec["aborted"]
    p = keep_probability(0.1)
    assert rec["rows_reported"] == pytest.approx(4.8 * p + 7.2 * (1 - p), abs=1.5)
    assert np.isfinite(rec["rmse"])


def test_layout_puts_each_items_row_and_leaves_the_global_mean_shared() -> None:
    sim = Simulation(ExperimentConfig(**SMALL))
    layout = row_layout(sim.model)
    assert layout.num_rows == 12 and layout.width == 33 and layout.shared.size == sim.model.length - 12 * 33
    deltas = np.zeros((1, sim.model.length))
    deltas[0, layout.rows[4]] = 0.5
    deltas[0, layout.shared] = 0.25
    (x,) = submodel_inputs(layout, deltas, [7]).values()
    assert x.rows.tolist() == [4] and np.all(x.values == 0.5) and np.all(x.shared == 0.25)


@pytest.mark.parametrize(("extra", "field"), [
    ({"submodel": True, "protocol": "plaintext"}, "submodel"),
    ({"submodel": True, "dp": "user", "epsilon": 4.0}, "submodel"),
    ({"submodel": True, "compression": "q8"}, "submodel"),
    ({"submodel": True, "model_compression": "hash:4"}, "submodel.*model compression"),
    ({"submodel": True, "model_compression": "mixed:2+int4"}, "submodel.*model compression"),
    ({"submodel": True, "item_epsilon": 0.0}, "item_epsilon"),
])
def test_submodel_refusals_name_the_field(extra: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ExperimentConfig.from_mapping({**SMALL, "threat_model": "default", **extra})


def test_item_epsilon_without_submodel_is_refused() -> None:
    with pytest.raises(ConfigError, match="--submodel"):
        ExperimentConfig.from_mapping({**SMALL, "item_epsilon": 2.0})

"""``--model-compression``: the parsed spec, the public expansion of each technique for every
registered model, int8 storage, the popularity count round, the simulator's bytes, the
composition with update compression and DP, and the benchmark's smoke run (issue #18)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.errors import ConfigError
from securefedrec.models.compressed import CompressedModel, build_structure, model_bytes
from securefedrec.models.compression_spec import parse_model_compression
from securefedrec.models.registry import MODELS, build_model, get_model

SMALL: dict[str, Any] = dict(synthetic_users=30, synthetic_items=40, synthetic_ratings_per_user=8,
                             factors=6, device="cpu", sample_rate=1.0, rounds=1, seed=3, eval_every=1)
EXTRA: dict[str, dict[str, Any]] = {"mf": {}, "implicit-mf": {"feedback": "implicit", "split": "loo"},
                                    "ncf": {"feedback": "implicit", "split": "loo", "mlp_layers": "8,4"},
                                    "fism": {"feedback": "implicit", "split": "loo"}, "popularity": {}}
ITEM_MODELS = sorted(set(MODELS) - {"content", "popularity"})
"""The models with per-item embeddings (content's global part is feature weights: nothing to compress;
popularity's is one or two values per item: only hash/qr/prune/int8 apply, tested below)."""
SPECS = ("int8", "hash:4", "qr:4", "mixed:4", "prune:0.75", "mixed:2+int8", "hash:3+int8")
ITEMS = 40


def _config(model: str = "mf", **changes: Any) -> ExperimentConfig:
    return ExperimentConfig(**{**SMALL, "model": model, **EXTRA[model], **changes})


def _popularity(items: int = ITEMS) -> np.ndarray:
    return np.arange(items, dtype=np.float64)[::-1] ** 1.5  # item 0 the most popular


def _model(model: str, spec: str, items: int = ITEMS) -> CompressedModel:
    inner = get_model(model).from_config(_config(model), items)
    parsed = parse_model_compression(spec)
    return CompressedModel(inner, parsed, seed=5, popularity=_popularity(items) if parsed.needs_popularity
                           else None)


@pytest.mark.parametrize("spec", ["hash:4", "qr:4", "prune:0.75", "hash:3+int8"])
def test_popularity_compresses_by_the_chain_rule_and_mixed_dimensions_refuse_it(spec: str) -> None:
    comp = _model("popularity", spec)
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(comp.length, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(2, comp.inner.length, dtype=torch.float64, generator=gen)
    grads = [torch.autograd.grad((comp.expand(theta) * v[j]).sum(), theta)[0] for j in range(2)]
    torch.testing.assert_close(comp.project(v), torch.stack(grads))
    with pytest.raises(ConfigError, match=r"mixed: .* cannot hold one value per item"):
        _model("popularity", "mixed:4")


def test_a_model_without_item_rows_is_refused() -> None:
    """content's global vector does not grow with the catalogue; compressing it is refused, clearly."""
    config = ExperimentConfig(**{**SMALL, "model": "content", "model_compression": "hash:4"})
    with pytest.raises(ConfigError, match="--model content has no per-item coordinates"):
        Simulation(config)


# ---- the spec --------------------------------------------------------------------------------------
def test_specs_parse_into_one_structure_and_int8() -> None:
    assert parse_model_compression("none").active is False
    spec = parse_model_compression("mixed:8+int8")
    assert (spec.structure, spec.amount, spec.int8, spec.needs_popularity) == ("mixed", 8.0, True, True)
    assert parse_model_compression("int8") == parse_model_compression("int8")
    assert parse_model_compression("prune:0.9").amount == 0.9
    spec = parse_model_compression("mixed:1.3+int4")
    assert (spec.structure, spec.amount, spec.int8, spec.int4, spec.bits) == ("mixed", 1.3, False, True, 4)
    assert parse_model_compression("int4").active and parse_model_compression("hash:2").bits == 32


@pytest.mark.parametrize(("text", "match"), [
    ("zip:4", "unknown model compression"), ("hash:4+qr:4", "at most one"), ("hash:x", "needs a number"),
    ("hash:1", "ratio R > 1"), ("prune:1.5", "fraction"), ("int8+int8", "at most one of int8, int4"),
    ("int8+int4", "at most one of int8, int4"), ("qr:nan", "ratio"), ("int4:2", "unknown"),
])
def test_bad_specs_are_refused_naming_the_flag(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_model_compression(text)
    with pytest.raises(ConfigError, match="model_compression"):
        ExperimentConfig(model_compression=text)


def test_the_cli_flag_sets_the_config() -> None:
    from securefedrec.cli import build_parser, config_from_args

    config = config_from_args(build_parser({}).parse_args(["run", "--model-compression", "qr:8+int8"]))
    assert config.model.compression == "qr:8+int8"
    assert isinstance(build_model(config, 100), CompressedModel)
    assert not isinstance(build_model(config.replace(model_compression="none"), 100), CompressedModel)


# ---- the expansion, for every model ----------------------------------------------------------------
@pytest.mark.parametrize("model", ITEM_MODELS)
@pytest.mark.parametrize("spec", SPECS)
def test_project_is_the_chain_rule_of_expand(model: str, spec: str) -> None:
    """``project`` (a sparse E^T product) equals autograd through ``expand`` (an index_add)."""
    comp = _model(model, spec)
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(comp.length, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(2, comp.inner.length, dtype=torch.float64, generator=gen)
    grads = [torch.autograd.grad((comp.expand(theta) * v[j]).sum(), theta)[0] for j in range(2)]
    torch.testing.assert_close(comp.project(v), torch.stack(grads))


@pytest.mark.parametrize("model", ITEM_MODELS)
def test_non_item_coordinates_pass_through_and_the_item_part_shrinks(model: str) -> None:
    comp = _model(model, "hash:4")
    inner = comp.inner
    index = inner.item_rows(np.arange(inner.length, dtype=np.float64)).astype(np.int64)
    dense = np.setdiff1d(np.arange(inner.length), index.ravel())
    theta = torch.randn(comp.length, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    v = comp.expand(theta)
    tail = theta[comp.length - len(dense):]
    torch.testing.assert_close(v[torch.as_tensor(dense)], tail)  # MF's mu, NCF's layers: unchanged
    assert comp.length - len(dense) == math.ceil(ITEMS / 4) * index.shape[1]
    assert comp.decay_span <= comp.length
    assert comp.init_global((1, 5), torch.Generator()).shape == (comp.length,)


def test_the_device_view_follows_each_new_vector() -> None:
    """Temporaries freed between calls may share an id: the cache must not serve the old one's view."""
    comp = _model("mf", "hash:4")
    for value in (1.0, 2.0, 3.0, 2.0):
        assert float(comp.device_view(torch.full((comp.length,), value, dtype=torch.float64))[-1]) == value
    theta = torch.zeros(comp.length, dtype=torch.float64)
    assert float(comp.device_view(theta)[-1]) == 0.0
    theta.add_(5.0)  # in place: a new torch version
    assert float(comp.device_view(theta)[-1]) == 5.0


def test_hash_rows_are_signed_copies_of_balanced_shared_rows() -> None:
    comp = _model("implicit-mf", "hash:4")
    theta = torch.randn(comp.length, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rows = comp.item_rows(theta.numpy())
    table = theta.numpy().reshape(-1, rows.shape[1])
    match = [[j for j in range(len(table)) if np.allclose(np.abs(r), np.abs(table[j]))] for r in rows]
    assert all(len(m) == 1 for m in match)
    assert sorted(np.bincount([m[0] for m in match])) == [4] * 10  # 40 items over 10 rows, 4 each
    other = _model("implicit-mf", "hash:4")
    assert np.array_equal(other.structure.cols, comp.structure.cols)  # public: the seed fixes it


def test_qr_gives_every_item_its_own_row_from_two_small_tables() -> None:
    comp = _model("mf", "qr:2")
    theta = torch.randn(comp.length, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rows = comp.item_rows(theta.numpy())
    assert len({tuple(np.round(r, 12)) for r in rows}) == ITEMS
    assert comp.length - 1 <= ITEMS // 2 * 7  # at most items / 2 rows of k + 1 (then mu)
    floor = _model("mf", "qr:40")  # two tables cannot go below about 2 sqrt(items) rows
    assert floor.length - 1 == (7 + 6) * 7


def test_mixed_gives_popular_items_more_columns_and_keeps_the_bias() -> None:
    comp = _model("mf", "mixed:4")
    theta = torch.ones(comp.length, dtype=torch.float64)
    rows = comp.item_rows(theta.numpy())  # (items, k + 1), 1 where a column is kept
    dims = (rows != 0).sum(1)
    assert np.all(np.diff(dims) <= 0) and dims[0] == 7 and dims[-1] >= 1  # popularity falls with the id
    assert np.all(rows[:, -1] == 1)  # every item keeps its bias
    assert dims.sum() <= ITEMS * 7 / 4
    with pytest.raises(ConfigError, match="smaller ratio"):
        _model("mf", "mixed:20")


def test_prune_zeroes_the_least_popular_rows() -> None:
    comp = _model("mf", "prune:0.75")
    rows = comp.item_rows(np.ones(comp.length))
    assert np.all(rows[:10] == 1) and np.all(rows[10:] == 0)


def test_a_popularity_structure_waits_for_its_counts() -> None:
    model = build_model(_config("mf", model_compression="mixed:4"), ITEMS)
    assert isinstance(model, CompressedModel) and model.needs_popularity
    with pytest.raises(ConfigError, match="popularity"):
        _ = model.length
    with pytest.raises(ConfigError, match="popularity of the 40 items"):
        build_structure(model.inner, model.spec, 0, np.zeros(3))


# ---- int8 ------------------------------------------------------------------------------------------
def _half_step(theta: torch.Tensor, top: int) -> float:
    """A block's scale as stored: its largest magnitude over ``top``, rounded up to a float16."""
    exact = float(theta.abs().max()) / top
    half = torch.tensor(exact, dtype=torch.float16)
    up = torch.nextafter(half, torch.tensor(math.inf).half())
    return float(half) if float(half) >= exact else float(up)


def test_int8_is_within_half_a_step_of_each_row_scale_and_one_byte_a_value() -> None:
    comp = _model("mf", "int8", items=50)
    theta = torch.randn(comp.length, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    theta[:7] *= 100  # one loud row must not coarsen the others
    stored = comp.stored(theta)
    blocks = comp.structure.blocks()
    for b in np.unique(blocks):
        part = torch.as_tensor(blocks == b)
        step = _half_step(theta[part], 127)
        assert step >= float(theta[part].abs().max()) / 127  # float16 rounded up: nothing is clamped
        torch.testing.assert_close(stored[part] / step, (stored[part] / step).round())
        assert float((stored[part] - theta[part]).abs().max()) <= step * 0.5 * (1 + 1e-6)
    assert len(np.unique(blocks)) == 51  # one scale per item row, one for mu
    assert comp.model_bytes == comp.length + 2 * 51  # rows of k + 1 = 7: 9 bytes instead of 28
    assert comp.model_bytes < model_bytes(comp.inner) / 3


def test_float16_scales_round_up_and_cap_at_the_largest_half() -> None:
    from securefedrec.models.compressed import half_scales

    exact = torch.tensor([1e-9, 3e-7, 0.1, 1 / 3, 7.0, 1e6], dtype=torch.float64)
    half = half_scales(exact)
    assert half.dtype == torch.float16
    wide = half.to(torch.float64)
    assert bool(torch.all(wide[:5] >= exact[:5]))  # never below: the largest value stays on the top level
    below = torch.nextafter(half[:5], torch.zeros_like(half[:5])).to(torch.float64)
    assert bool(torch.all(below < exact[:5]))  # the nearest float16 at or above, not a coarser one
    assert float(wide[5]) == torch.finfo(torch.float16).max  # a magnitude beyond float16 is capped


def test_int4_rounds_to_fifteen_levels_of_each_row_scale_at_half_a_byte_a_value() -> None:
    comp = _model("mf", "int4", items=50)
    theta = torch.randn(comp.length, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    stored = comp.stored(theta)
    blocks = comp.structure.blocks()
    for b in np.unique(blocks):
        part = torch.as_tensor(blocks == b)
        step = _half_step(theta[part], 7)  # levels -7..7: an int8 scale (/127) would be 18x finer
        levels = stored[part] / step
        torch.testing.assert_close(levels, levels.round())
        assert float(levels.abs().max().round()) == 7  # the largest magnitude is on the top level
        assert float((stored[part] - theta[part]).abs().max()) <= step * 0.5 * (1 + 1e-6)
    assert comp.model_bytes == math.ceil(comp.length / 2) + 2 * 51  # k + 1 = 7 values: 3.5 bytes + a scale
    int8 = _model("mf", "int8", items=50)
    assert float((int8.stored(theta) - theta).abs().max()) < float((stored - theta).abs().max()) / 4


def test_int8_training_is_the_inner_training_on_the_stored_values() -> None:
    """No structure: E only reorders the item rows, so the deltas are the inner model's own on int8 values."""
    sim = Simulation(_config("mf"))
    comp = _model("mf", "int8", items=sim.dataset.num_items)
    s = comp.structure
    assert np.array_equal(np.sort(s.rows), np.arange(comp.inner.length)) and comp.length == comp.inner.length
    theta = torch.from_numpy(comp.init_global((1, 5), torch.Generator().manual_seed(1)).numpy() * 30)
    stored = comp.stored(theta)
    assert not torch.equal(stored, theta)
    v = torch.zeros(comp.inner.length, dtype=torch.float64)
    v[torch.as_tensor(s.rows)] = stored[torch.as_tensor(s.cols)]
    users = [np.array([u]) for u in range(5)]
    kw: dict[str, Any] = dict(local={}, generator=torch.Generator().manual_seed(0))
    got = comp.train(theta, sim.pool.data, users, 1, 0.5, torch.device("cpu"), torch.float64, **kw)
    want = comp.inner.train(v, sim.pool.data, users, 1, 0.5, torch.device("cpu"), torch.float64, **kw)
    torch.testing.assert_close(got.deltas[:, s.cols], want.deltas[:, s.rows])


# ---- the simulator ---------------------------------------------------------------------------------
def test_the_count_round_is_the_exact_popularity_and_the_uplink_shrinks_under_secagg_plus() -> None:
    full = Simulation(_config("mf", protocol="secagg+"))
    small = Simulation(_config("mf", protocol="secagg+", model_compression="mixed:2+int8"))
    assert isinstance(small.model, CompressedModel)
    train = small.dataset.train
    expect = np.bincount(train.items, minlength=small.dataset.num_items)  # one rating per (user, item)
    assert small.model.popularity is not None and np.array_equal(small.model.popularity, expect)
    assert small.count_round is not None and small.count_round["bytes_up"] > 0
    dims = (small.model.item_rows(np.ones(small.model.length)) != 0).sum(1)
    order = np.argsort(-expect, kind="stable")
    assert dims[order[0]] == 7 and np.all(np.diff(dims[order]) <= 0)  # columns follow the true counts
    a, b = full.run_round(), small.run_round()
    assert b["model_bytes"] == small.model.model_bytes < a["model_bytes"] / 5  # k + 1 = 7: 2x, then int8
    # each client's masked vector holds one 32-bit ring element per coordinate; the rest is the same
    assert a["clients"] == b["clients"]
    assert a["bytes_up"] - b["bytes_up"] == a["clients"] * 4 * (full.model.length - small.model.length)
    assert b["bytes_broadcast"] == small.model.broadcast_bytes * b["clients"] < a["bytes_broadcast"] / 5
    assert a["bytes_down"] - a["bytes_broadcast"] == b["bytes_down"] - b["bytes_broadcast"]  # the protocol's
    report = small._report(None, None, 0.0)
    assert report["model_bytes"] == b["model_bytes"] and report["count_round"] == small.count_round


@pytest.mark.parametrize(("model", "compression"), [("mf", "q8"), ("implicit-mf", "randk:0.5"),
                                                    ("ncf", "mod:8")])
def test_a_compressed_model_composes_with_update_compression(model: str, compression: str) -> None:
    sim = Simulation(_config(model, model_compression="qr:3+int8", compression=compression))
    record = sim.run_round()
    assert not record["aborted"] and sim.global_vec.shape == (sim.model.length,)
    assert record["hr@10" if model != "mf" else "rmse"] is not None


def test_dp_composes_with_hash_and_refuses_the_unaccounted_count_round() -> None:
    dp: dict[str, Any] = dict(dp="user", noise_multiplier=1.0, clip=0.5, protocol="plaintext")
    sim = Simulation(_config("mf", model_compression="hash:4", **dp))
    record = sim.run_round()
    assert record["epsilon"] is not None and sim.global_vec.shape == (sim.model.length,)
    with pytest.raises(ConfigError, match="count round"):
        Simulation(_config("mf", model_compression="mixed:4", **dp))


def test_an_uncompressed_run_reports_its_float32_model_bytes() -> None:
    sim = Simulation(_config("implicit-mf"))
    assert sim.run_round()["model_bytes"] == 4 * sim.model.length


# ---- the benchmark ---------------------------------------------------------------------------------
def test_the_benchmark_smoke_run_writes_the_issue_json(tmp_path: Path) -> None:
    from benchmarks.model_compression import main

    out, png = tmp_path / "mc.json", tmp_path / "mc.png"
    assert main(["--quick", "--protocol", "plaintext", "--bytes-protocol", "secagg+", "--techniques",
                 "mixed:2+int8", "--submodel-techniques", "int4", "--json", str(out),
                 "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert set(data["uncompressed"]) >= {"model_bytes", "rmse", "hr@10"}
    techniques = [r["technique"] for r in data["rows"]]
    assert techniques[:2] == ["mixed:2+int8", "int4 submodel"] and techniques[2].startswith("k=")
    for row in data["rows"]:
        assert set(row) >= {"technique", "ratio", "model_bytes", "bytes_up", "bytes_down", "rmse", "hr@10"}
        assert row["ratio"] == pytest.approx(data["uncompressed"]["model_bytes"] / row["model_bytes"])
        assert row["ratio_up"] == pytest.approx(data["uncompressed"]["bytes_up"] / row["bytes_up"])
        assert row["bytes_model_down_per_client"] + row["bytes_protocol_down_per_client"] == pytest.approx(
            row["bytes_down_per_client"])
    assert data["rows"][0]["ratio"] > 6
    sub = data["rows"][1]  # bytes only: one secagg+ round in which each client sends its rows
    assert sub["rmse"] is None and sub["submodel"]["protocol"] == "secagg+"
    assert sub["bytes_up_per_client"] < data["uncompressed"]["bytes_up_per_client"] / 2  # 80 items, ~10 rows
    assert sub["bytes_model_down_per_client"] < data["uncompressed"]["bytes_model_down_per_client"] / 8
    assert any(c["check"].startswith("int4 submodel: on the wire") for c in data["checks"])
    assert data["catalog_100k"]["compressed_model_bytes"] < data["catalog_100k"]["model_bytes"] / 6
    assert png.stat().st_size > 0

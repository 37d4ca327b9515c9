"""Leave-one-out splits, implicit feedback and the loaders of every data set on small made files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from securefedrec.data import (
    Dataset,
    RawRows,
    binarize,
    load_dataset,
    load_ml1m,
    load_ml_latest_small,
    load_ratings_file,
    loo_masks,
    loo_split,
    synthetic,
)
from securefedrec.errors import DataError

# user, item, rating, timestamp: u1 has 4 interactions (two at time 30), u2 two, u3 one, u4 rates item 7 twice
ROWS = [
    ("u1", "10", 4, 10), ("u1", "11", 2, 30), ("u1", "12", 5, 20), ("u1", "13", 1, 30),
    ("u2", "10", 3, 5), ("u2", "12", 4, 1),
    ("u3", "11", 5, 7),
    ("u4", "7", 1, 50), ("u4", "8", 2, 10), ("u4", "7", 5, 3), ("u4", "9", 4, 20),
]


def _by_user(data: Dataset, part: str) -> dict[str, list[tuple[str, float]]]:
    r = getattr(data, part)
    out: dict[str, list[tuple[str, float]]] = {}
    for u, i, v in zip(r.users, r.items, r.ratings, strict=True):
        out.setdefault(data.user_ids[u], []).append((data.item_ids[i], float(v)))
    return {u: sorted(v) for u, v in out.items()}


def _check_loo(data: Dataset) -> None:
    assert _by_user(data, "test") == {"u1": [("13", 1.0)], "u2": [("10", 3.0)], "u4": [("7", 1.0)]}
    assert _by_user(data, "validation") == {"u1": [("11", 2.0)], "u4": [("9", 4.0)]}
    assert _by_user(data, "train") == {"u1": [("10", 4.0), ("12", 5.0)], "u2": [("12", 4.0)],
                                       "u3": [("11", 5.0)], "u4": [("8", 2.0)]}


def test_loo_masks_latest_is_test_second_validation_ties_by_row_and_repeats_once() -> None:
    users = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    items = np.array([0, 1, 2, 3, 0, 2, 1, 4, 5, 4, 6])
    stamps = np.array([t for *_, t in ROWS])
    train, validation, test = loo_masks(users, items, stamps)
    assert test.tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0]  # u1: item 13 (row 3) beats item 11 at time 30
    assert validation.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert train.tolist() == [1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0]  # u4's earlier rating of item 7: no part
    assert not (train & test).any() and not (train & validation).any() and not (validation & test).any()


def test_loo_on_a_ratings_file_with_and_without_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    data = load_ratings_file(path, split="loo")
    assert data.name == "r.csv/loo" and data.scale == (1.0, 5.0)
    _check_loo(data)
    # no timestamp column: the line order is the time order
    ordered = sorted(enumerate(ROWS), key=lambda kv: (kv[1][3], kv[0]))
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(f"{u},{i},{r}\n" for _, (u, i, r, _) in ordered))
    _check_loo(load_ratings_file(plain, split="loo"))


def test_ml1m_and_latest_small_loaders_read_their_formats_with_both_splits(tmp_path: Path) -> None:
    ids = {"u1": "1", "u2": "2", "u3": "3", "u4": "4"}
    (tmp_path / "ratings.dat").write_text("".join(f"{ids[u]}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{ids[u]},{i},{r - 0.5 if i == '8' else r},{t}\n" for u, i, r, t in ROWS))
    m1 = load_ml1m(tmp_path, split="loo")
    small = load_ml_latest_small(tmp_path, split="loo")
    for data in (m1, small):
        assert data.user_ids == ("1", "2", "3", "4")
        assert len(data.train) == 5 and len(data.validation) == 2 and len(data.test) == 3
    assert small.step == 0.5 and 1.5 in small.train.ratings
    held = load_ml1m(tmp_path, seed=3)
    assert len(held.validation) == 0 and len(held.train) + len(held.test) == len(ROWS)
    assert load_dataset("ml-1m", tmp_path, "loo", feedback="implicit").feedback == "implicit"
    with pytest.raises(DataError, match="no official split 'u1'"):
        load_dataset("ml-latest-small", tmp_path, "u1")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ratings.dat").write_text("1::10::4::5\n1::11::x::6\n")
    with pytest.raises(DataError, match=r"ratings.dat, line 2, column 3 .*'x' is not a number"):
        load_ml1m(bad, split="loo")


def test_implicit_feedback_binarizes_every_rating_and_keeps_the_split(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    explicit = load_dataset("file", data_file=path, split="loo")
    implicit = load_dataset("file", data_file=path, split="loo", feedback="implicit")
    assert explicit.feedback == "explicit" and implicit.feedback == "implicit"
    assert implicit.summary()["feedback"] == "implicit" and implicit.scale == (0.0, 1.0)
    for part in ("train", "validation", "test"):
        a, b = getattr(explicit, part), getattr(implicit, part)
        assert (b.ratings == 1.0).all()
        np.testing.assert_array_equal(a.users, b.users)
        np.testing.assert_array_equal(a.items, b.items)
    assert binarize(explicit).summary() == implicit.summary()
    with pytest.raises(DataError, match="unknown feedback 'clicks'"):
        load_dataset("file", data_file=path, feedback="clicks")


def test_ml100k_loo_holds_out_each_users_latest_rating(ml100k_dir: Path) -> None:
    data = load_dataset("ml-100k", ml100k_dir, "loo")
    assert data.summary()["validation_ratings"] == 943 and len(data.test) == 943
    assert len(data.train) + 2 * 943 == 100_000  # u.data has no repeated pair; every user has >= 20
    latest_train = np.zeros(943, np.int64)
    np.maximum.at(latest_train, data.train.users, data.train.timestamps)
    stamp = np.zeros(943, np.int64)
    stamp[data.validation.users] = data.validation.timestamps
    assert (stamp >= latest_train).all()
    stamp[data.test.users] = data.test.timestamps
    assert (stamp >= latest_train).all()
    implicit = load_dataset("ml-100k", ml100k_dir, "loo", feedback="implicit")
    np.testing.assert_array_equal(implicit.test.items, data.test.items)


def test_synthetic_data_has_timestamps_loo_and_implicit_interactions() -> None:
    plain = synthetic(200, 100, 20, seed=4)
    stamps = np.r_[plain.train.timestamps, plain.test.timestamps]
    assert len(np.unique(stamps)) == len(plain.train) + len(plain.test)  # distinct: no ties
    loo = synthetic(200, 100, 20, seed=4, split="loo")
    assert len(loo.test) == 200 and len(loo.validation) == 200 and loo.feedback == "explicit"
    # the same ratings, split another way
    both = sorted(zip(*(np.r_[getattr(plain.train, f), getattr(plain.test, f)] for f in ("users", "items")),
                      strict=True))
    assert sorted(zip(*(loo.all_ratings().users, loo.all_ratings().items), strict=True)) == both
    implicit = synthetic(200, 100, 20, seed=4, split="loo", feedback="implicit")
    assert implicit.feedback == "implicit" and (implicit.all_ratings().ratings == 1.0).all()
    # implicit users pick items by taste too, so not the explicit data's items
    assert sorted(zip(implicit.all_ratings().users, implicit.all_ratings().items, strict=True)) != both
    with pytest.raises(DataError, match="no split 'u1'"):
        synthetic(split="u1")


def test_loo_full_holds_out_only_the_latest_and_trains_on_everything_else(tmp_path: Path) -> None:
    users = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    items = np.array([0, 1, 2, 3, 0, 2, 1, 4, 5, 4, 6])
    stamps = np.array([t for *_, t in ROWS])
    train, validation, test = loo_masks(users, items, stamps, validation=False)
    assert test.tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0]  # the same test items as loo
    assert not validation.any()
    assert train.tolist() == [1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 1]  # loo's validation rows train
    path = tmp_path / "r.csv"
    path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ROWS))
    data = load_ratings_file(path, split="loo-full")
    assert data.name == "r.csv/loo-full" and len(data.validation) == 0
    assert _by_user(data, "test") == {"u1": [("13", 1.0)], "u2": [("10", 3.0)], "u4": [("7", 1.0)]}
    assert _by_user(data, "train") == {"u1": [("10", 4.0), ("11", 2.0), ("12", 5.0)], "u2": [("12", 4.0)],
                                       "u3": [("11", 5.0)], "u4": [("8", 2.0), ("9", 4.0)]}
    # the same split through every loader, and binarized
    (tmp_path / "ratings.dat").write_text("".join(f"{u[1:]}::{i}::{r}::{t}\n" for u, i, r, t in ROWS))
    m1 = load_dataset("ml-1m", tmp_path, "loo-full", feedback="implicit")
    assert m1.name == "ml-1m/loo-full" and m1.feedback == "implicit"
    assert (len(m1.train), len(m1.validation), len(m1.test)) == (7, 0, 3)
    synth = synthetic(200, 100, 20, seed=4, split="loo-full")
    loo = synthetic(200, 100, 20, seed=4, split="loo")
    np.testing.assert_array_equal(synth.test.items, loo.test.items)
    assert len(synth.validation) == 0 and len(synth.train) == len(loo.train) + len(loo.validation)
    with pytest.raises(DataError, match="'holdout' is not a leave-one-out split"):
        loo_split("x", RawRows(["a"], ["b"], np.ones(1, np.float32), np.zeros(1, np.int64)), (1.0, 5.0),
                  split="holdout")


def test_ml100k_loo_full_trains_on_loo_train_and_validation(ml100k_dir: Path) -> None:
    loo = load_dataset("ml-100k", ml100k_dir, "loo", feedback="implicit")
    full = load_dataset("ml-100k", ml100k_dir, "loo-full", feedback="implicit")
    assert len(full.validation) == 0 and len(full.train) + 943 == 100_000
    np.testing.assert_array_equal(full.test.items, loo.test.items)
    pairs = set(zip(full.train.users.tolist(), full.train.items.tolist(), strict=True))
    assert pairs == set(zip(np.r_[loo.train.users, loo.validation.users].tolist(),
                            np.r_[loo.train.items, loo.validation.items].tolist(), strict=True))


def test_loo_full_is_a_valid_config_and_fusion_falls_back_to_its_holdout() -> None:
    from securefedrec import ExperimentConfig, Simulation
    from securefedrec.models.fusion import HOLDOUT, Fusion, holdout_flags

    from_file = ExperimentConfig.from_mapping({"dataset": "file", "data_file": "x", "split": "loo-full"})
    assert from_file.data.split == "loo-full"
    config = ExperimentConfig(synthetic_users=40, synthetic_items=30, synthetic_ratings_per_user=20,
                              factors=4, device="cpu", sample_rate=1.0, rounds=1, seed=2,
                              protocol="plaintext", fusion="implicit-mf,popularity",
                              feedback="implicit", split="loo-full")
    sim = Simulation(config)
    assert isinstance(sim.model, Fusion) and len(sim.dataset.validation) == 0
    members_data, held = sim.model.split(sim.pool.data)  # no validation item: a holdout of the training data
    flags = holdout_flags(sim.pool.data, HOLDOUT, config.run.seed)
    assert flags.any() and held.counts.sum() == flags.sum()
    assert members_data.counts.sum() + held.counts.sum() == len(sim.dataset.train)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from securefedrec.data import load_dataset, load_ml100k, load_ratings_file, read_ratings, synthetic
from securefedrec.errors import DataError


def write(tmp_path: Path, text: str, name: str = "r.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "1,10,4\n2,11,5\n3,12\n")
    with pytest.raises(DataError, match=r"r\.csv:3: expected user, item, rating"):
        read_ratings(p, sep=",")


def test_rating_outside_scale_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "1,10,4\n2,11,7\n")
    with pytest.raises(DataError, match=r"r\.csv:2: rating 7 is outside the scale \[1, 5\]"):
        read_ratings(p, sep=",")


def test_non_numeric_rating_and_half_stars(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r":1: rating 'x' is not a number"):
        read_ratings(write(tmp_path, "1,2,x\n"), sep=",")
    with pytest.raises(DataError, match="not a multiple of 1"):
        read_ratings(write(tmp_path, "1,2,3.5\n"), sep=",", step=1.0)
    _, _, r, _ = read_ratings(write(tmp_path, "u,i,rating,ts\n1,2,3.5,9\n"), sep=",", header=True,
                              scale=(0.5, 5.0), step=0.5)
    assert r.tolist() == [3.5]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no ratings in file"):
        read_ratings(write(tmp_path, "\n\n"), sep=",")
    with pytest.raises(DataError, match="not found"):
        read_ratings(tmp_path / "nope.csv", sep=",")


def test_ids_are_dense_and_mapping_is_kept(tmp_path: Path) -> None:
    rows = "".join(f"u{u},i{i},{1 + (u + i) % 5}\n" for u in range(5) for i in range(0, 12, 1 + u % 3))
    ds = load_ratings_file(write(tmp_path, rows), sep=",", test_fraction=0.25, seed=1)
    both = np.concatenate([ds.train.users, ds.test.users])
    assert set(both.tolist()) == set(range(ds.num_users))
    assert ds.user_ids[int(ds.train.users[0])].startswith("u")
    # every user keeps at least one training rating
    assert set(ds.train.users.tolist()) == set(range(ds.num_users))


def test_holdout_is_seeded() -> None:
    a, b, c = synthetic(50, 40, 10, seed=3), synthetic(50, 40, 10, seed=3), synthetic(50, 40, 10, seed=4)
    assert np.array_equal(a.test.items, b.test.items)
    assert not np.array_equal(a.test.items, c.test.items)


def test_synthetic_has_long_tail_popularity_and_valid_scale() -> None:
    ds = synthetic(2000, 500, 30, seed=0)
    counts = np.sort(np.bincount(np.concatenate([ds.train.items, ds.test.items]), minlength=500))[::-1]
    top_decile = counts[:50].sum() / counts.sum()
    assert top_decile > 0.35  # a long tail: 10% of items hold far more than 10% of ratings
    r = np.concatenate([ds.train.ratings, ds.test.ratings])
    assert r.min() >= 1 and r.max() <= 5 and len(np.unique(r)) == 5


def test_test_items_never_seen_in_training_are_kept(tmp_path: Path) -> None:
    base = write(tmp_path, "1\t1\t5\t0\n1\t2\t3\t0\n2\t1\t4\t0\n", "u1.base")
    write(tmp_path, "1\t9\t4\t0\n3\t1\t2\t0\n", "u1.test")
    assert base.exists()
    ds = load_ml100k(tmp_path, "u1")
    s = ds.summary()
    assert s["cold_test_items"] == 1 and s["cold_test_users"] == 1


def test_unknown_names_list_the_choices(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="choose one of: synthetic, ml-100k"):
        load_dataset("netflix")
    with pytest.raises(DataError, match="u1, u2"):
        load_ml100k(tmp_path, "u9")
    with pytest.raises(DataError, match="grouplens"):
        load_ml100k(tmp_path, "u1")


def test_ml100k_official_split(ml100k_dir: Path) -> None:
    ds = load_ml100k(ml100k_dir, "u1")
    assert (len(ds.train), len(ds.test)) == (80000, 20000)
    assert ds.num_users == 943 and ds.num_items == 1682

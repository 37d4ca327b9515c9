from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from securefedrec.data import (
    RawRows,
    load_dataset,
    load_ml1m,
    load_ml100k,
    load_ml_latest_small,
    load_ratings_file,
    parse_columns,
    parse_rating_scale,
    read_ml100k_udata,
    read_ratings,
    synthetic,
)
from securefedrec.errors import DataError


def write(tmp_path: Path, text: str, name: str = "r.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def multiset(rows: RawRows) -> collections.Counter[tuple[str, str, float, int]]:
    return collections.Counter(zip(rows.users, rows.items, rows.ratings.tolist(), rows.timestamps.tolist(),
                                   strict=True))


# MovieLens header names in another order than user, item, rating, an extra id column, half stars
SHUFFLED = ("timestamp,movieId,id,rating,userId\n"
            "881250949,m10,1,4.5,alice\n"
            "881250950,m11,2,0.5,alice\n"
            "881250951,m10,3,5,bob\n"
            "881250952,m12,4,3,bob\n"
            "881250953,m11,5,2.5,bob\n")


def test_movielens_header_in_any_order_with_extra_column_and_half_stars(tmp_path: Path) -> None:
    rows = read_ratings(write(tmp_path, SHUFFLED))
    assert rows.users == ["alice", "alice", "bob", "bob", "bob"]
    assert rows.items == ["m10", "m11", "m10", "m12", "m11"]
    assert rows.ratings.tolist() == [4.5, 0.5, 5.0, 3.0, 2.5]
    assert rows.timestamps.tolist() == list(range(881250949, 881250954))
    ds = load_ratings_file(write(tmp_path, SHUFFLED), test_fraction=0.4)
    assert (ds.num_users, ds.num_items) == (2, 3)
    assert (ds.scale, ds.step, ds.scale_inferred) == ((0.5, 5.0), 0.5, True)
    s = ds.summary()
    assert (s["users"], s["items"], s["rating_min"], s["rating_max"]) == (2, 3, 0.5, 5.0)
    assert (s["rating_step"], s["rating_scale_inferred"]) == (0.5, True)


@pytest.mark.parametrize("header", ["user_id,item_id,rating", "USER,Item,Rating", "userId,movieId,rating"])
def test_other_recognised_header_names(tmp_path: Path, header: str) -> None:
    rows = read_ratings(write(tmp_path, f"{header}\n7,8,4\n"))
    assert (rows.users, rows.items, rows.ratings.tolist()) == (["7"], ["8"], [4.0])
    assert rows.timestamps.tolist() == [0]


def test_headerless_tsv_with_columns_by_number(tmp_path: Path) -> None:
    # item, ignored, user, rating: 1-based column numbers
    p = write(tmp_path, "i1\tx\tu1\t4\ni2\tx\tu1\t2\ni1\tx\tu2\t5\n", "r.tsv")
    rows = read_ratings(p, columns="user=3,item=1,rating=4")
    assert (rows.users, rows.items) == (["u1", "u1", "u2"], ["i1", "i2", "i1"])
    assert rows.ratings.tolist() == [4, 2, 5]
    # the same columns by number in a file with a header: the header line is skipped
    h = write(tmp_path, "movie\tnote\tperson\tstars\n" + p.read_text(), "h.tsv")
    assert read_ratings(h, columns="user=3,item=1,rating=4").users == rows.users
    # and by name
    named = read_ratings(h, columns="user=person,item=movie,rating=stars")
    assert named.users == rows.users and named.items == rows.items


def test_double_colon_whitespace_and_string_ids(tmp_path: Path) -> None:
    dat = read_ratings(write(tmp_path, "1::1193::5::978300760\n1::661::3::978302109\n", "r.dat"))
    assert (dat.users, dat.items, dat.ratings.tolist(), dat.timestamps.tolist()) == (
        ["1", "1"], ["1193", "661"], [5.0, 3.0], [978300760, 978302109])
    ws = read_ratings(write(tmp_path, "anna  film-a 4\nanna film-b   2\nbo film-a 1\n", "r.txt"))
    assert ws.users == ["anna", "anna", "bo"] and ws.items == ["film-a", "film-b", "film-a"]
    s = write(tmp_path, "anna film-a 4\nanna film-b 2\nbo film-a 1\nbo film-c 5\n", "s.txt")
    ds = load_ratings_file(s, test_fraction=0.5, seed=0)
    assert (ds.num_users, ds.num_items) == (2, 3)
    # dense indices map back to the string ids
    both = list(zip(ds.train.users.tolist() + ds.test.users.tolist(),
                    ds.train.items.tolist() + ds.test.items.tolist(), strict=True))
    assert sorted((ds.user_ids[u], ds.item_ids[i]) for u, i in both) == [
        ("anna", "film-a"), ("anna", "film-b"), ("bo", "film-a"), ("bo", "film-c")]


def test_quoted_csv_fields_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_bytes(b'\xef\xbb\xbfuserId,movieId,rating\r\n"a, b",m1,4\r\nc,m2,2\r\n')
    rows = read_ratings(p)
    assert rows.users == ["a, b", "c"] and rows.ratings.tolist() == [4.0, 2.0]


def test_scale_inferred_or_given(tmp_path: Path) -> None:
    whole = load_ratings_file(write(tmp_path, "1,1,2\n1,2,4\n2,1,3\n2,2,5\n"))
    assert (whole.scale, whole.step, whole.scale_inferred) == ((2.0, 5.0), 1.0, True)
    tenths = load_ratings_file(write(tmp_path, "1,1,0.1\n1,2,0.7\n2,1,0.3\n2,2,0.9\n"))
    assert tenths.step is None
    given = load_ratings_file(write(tmp_path, "1,1,2\n1,2,4\n2,1,3\n2,2,5\n"), scale=(1.0, 10.0))
    assert (given.scale, given.step, given.scale_inferred) == ((1.0, 10.0), 1.0, False)
    assert given.summary()["rating_scale_inferred"] is False
    with pytest.raises(DataError, match=r"r\.csv: every rating is 4, so the rating scale cannot be inferred"):
        load_ratings_file(write(tmp_path, "1,1,4\n2,1,4\n"))


BAD_FILES = [  # (contents, expected message after the file name)
    ("userId,movieId,rating\n1,2,4\n1,3,abc\n",
     r", line 3, column 'rating': 'abc' is not a number"),
    ("userId,movieId,rating\n1,2,4\n1,3,nan\n",
     r", line 3, column 'rating': 'nan' is not a finite number"),
    ("userId,movieId,rating,timestamp\n1,2,4,5\n\n1,3,4,yesterday\n",
     r", line 4, column 'timestamp': 'yesterday' is not a number \(seconds since 1970\)"),
    ("userId,movieId,rating\n1,2,4\n1,3\n",
     r", line 3, column 'rating': missing: the line has 2 fields separated by commas, 3 are needed"),
    ("userId,movieId,rating\n1,2,4\n,3,4\n",
     r", line 3, column 'userId': empty value"),
    ("1,2,4\n1,3,four\n",
     r", line 2, column 3 \(rating\): 'four' is not a number"),
    ("1\t2\t4\n1\t3\n",
     r", line 2, column 3 \(rating\): missing: the line has 2 fields separated by tabs, 3 are needed"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_errors_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text, "ratings.csv")
    with pytest.raises(DataError, match=r"ratings\.csv" + message):
        read_ratings(p)


def test_scale_errors_name_line_column_and_where_the_scale_came_from(tmp_path: Path) -> None:
    p = write(tmp_path, "userId,movieId,rating\n1,2,4\n1,3,6\n", "ratings.csv")
    with pytest.raises(DataError, match=r"ratings\.csv, line 3, column 'rating': rating 6 is outside "
                                        r"the scale 1\.\.5 given by scale="):
        load_ratings_file(p, scale=(1.0, 5.0))
    with pytest.raises(DataError, match=r"ratings\.csv, line 3, column 'rating': rating 6 is outside "
                                        r"the scale 1\.\.5 given by --rating-scale"):
        load_dataset("file", data_file=p, rating_scale="1:5")
    with pytest.raises(DataError, match=r"ratings\.csv, line 2, column 'rating': rating 4 is not a "
                                        r"multiple of 3"):
        read_ratings(p, scale=(0.0, 9.0), step=3.0)
    p = write(tmp_path, "userId,movieId,rating\n1,2,4\n1,3,6.5\n1,4,inf\n", "ratings.csv")
    with pytest.raises(DataError, match=r"line 3, column 'rating': rating 6\.5 is not a multiple of 1"):
        read_ratings(p, scale=(1.0, 7.0), step=1.0)  # the earliest bad line, whichever check it fails


def test_header_errors_name_the_line_and_the_column(tmp_path: Path) -> None:
    p = write(tmp_path, "\nu,i,rating,ts\n1,2,3.5,9\n", "ratings.csv")
    with pytest.raises(DataError, match=r"ratings\.csv, line 2: the header \(u, i, rating, ts\) has no "
                                        r"user column that is recognised \(names: userId, user_id, user\)"
                                        r".*--columns"):
        read_ratings(p)
    with pytest.raises(DataError, match=r"ratings\.csv, line 2: no column 'person' in the header"):
        read_ratings(p, columns="user=person,item=i,rating=rating")
    rows = read_ratings(p, columns="user=u,item=i,rating=rating,timestamp=ts")
    assert (rows.users, rows.ratings.tolist(), rows.timestamps.tolist()) == (["1"], [3.5], [9])
    with pytest.raises(DataError, match=r"ratings\.csv: columns given by name need a header line"):
        read_ratings(p, header=False, columns="user=u,item=i,rating=rating")


def test_column_spec_and_scale_text() -> None:
    assert parse_columns("user=userId, item=movieId,rating=rating") == {
        "user": "userId", "item": "movieId", "rating": "rating"}
    assert parse_columns("user=2,item=1,rating=3,timestamp=4") == {
        "user": 2, "item": 1, "rating": 3, "timestamp": 4}
    for text, message in [("user=1,item=2", "no rating column"),
                          ("user=1,item=2,rating=3,genre=4", "unknown role"),
                          ("user=1,item=2,rating", "expected ROLE=COLUMN"),
                          ("user=0,item=1,rating=2", "start at 1"),
                          ("user=1,item=1,rating=2", "used for two roles"),
                          ("user=1,item=2,rating=3,user=4", "twice"),
                          ("user=a,item=2,rating=3", "not both")]:
        with pytest.raises(DataError, match=message):
            parse_columns(text)
    assert parse_rating_scale("0.5:5") == (0.5, 5.0)
    for text in ("5", "5:1", "a:b", "1:inf"):
        with pytest.raises(DataError, match="MIN"):
            parse_rating_scale(text)


def test_empty_header_only_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"r\.csv: no ratings in file \(it is empty\)"):
        read_ratings(write(tmp_path, "\n\n"))
    with pytest.raises(DataError, match=r"r\.csv: no ratings in file \(only a header\)"):
        read_ratings(write(tmp_path, "userId,movieId,rating\n"))
    with pytest.raises(DataError, match="not found"):
        read_ratings(tmp_path / "nope.csv")


def test_ml1m_and_ml_latest_small_loaders(tmp_path: Path) -> None:
    lines = [f"{u}::{i}::{1 + (u * i) % 5}::{978300000 + u + i}" for u in range(1, 5) for i in range(1, 6)]
    write(tmp_path, "\n".join(lines) + "\n", "ratings.dat")
    ds = load_ml1m(tmp_path, seed=1)
    assert (ds.name, ds.num_users, ds.num_items, len(ds.train) + len(ds.test)) == ("ml-1m", 4, 5, 20)
    assert (ds.scale, ds.step, ds.scale_inferred) == ((1.0, 5.0), 1.0, False)
    write(tmp_path, "1::1::6::0\n", "ratings.dat")
    with pytest.raises(DataError, match=r"ratings\.dat, line 1, column 3 \(rating\): rating 6 is outside the "
                                        r"scale 1\.\.5 of MovieLens 1M"):
        load_ml1m(tmp_path)
    rows = "".join(f"{u},{i},{0.5 * (1 + (u + i) % 10)},{1100000000 + i}\n"
                   for u in range(1, 4) for i in range(4))
    write(tmp_path, "userId,movieId,rating,timestamp\n" + rows, "ratings.csv")
    small = load_ml_latest_small(tmp_path)
    assert (small.num_users, small.num_items, small.scale, small.step) == (3, 4, (0.5, 5.0), 0.5)
    write(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.25,0\n", "ratings.csv")
    with pytest.raises(DataError, match=r"ratings\.csv, line 2, column 'rating': rating 4\.25 is not a "
                                        r"multiple of 0\.5"):
        load_ml_latest_small(tmp_path)
    with pytest.raises(DataError, match=r"no MovieLens 1M here.*grouplens"):
        load_ml1m(tmp_path / "nowhere")


def test_ids_are_dense_and_mapping_is_kept(tmp_path: Path) -> None:
    rows = "".join(f"u{u},i{i},{1 + (u + i) % 5}\n" for u in range(5) for i in range(0, 12, 1 + u % 3))
    ds = load_ratings_file(write(tmp_path, rows), test_fraction=0.25, seed=1)
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
    with pytest.raises(DataError, match=r"u\.data missing.*grouplens"):
        load_ml100k(tmp_path, "holdout")


def test_a_short_u_data_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "".join(f"{u}\t{i}\t3\t881250949\n" for u in range(1, 4) for i in range(1, 4)), "u.data")
    with pytest.raises(DataError, match=r"u\.data: 9 ratings .* by 3 users of 3 items, where MovieLens 100K "
                                        r"has 100,000 ratings by 943 users of 1,682 items .*truncated"):
        load_ml100k(tmp_path, "holdout")
    write(tmp_path, "1\t1\t3\t881250949\n1\t2\t3\t881250949\n1\t3\t7\t881250949\n", "u.data")
    with pytest.raises(DataError, match=r"u\.data, line 3, column 3 \(rating\): rating 7 is outside the "
                                        r"scale 1\.\.5 of MovieLens 100K"):
        load_ml100k(tmp_path, "holdout")


def test_ml100k_official_split(ml100k_dir: Path) -> None:
    ds = load_ml100k(ml100k_dir, "u1")
    assert (len(ds.train), len(ds.test)) == (80000, 20000)
    assert ds.num_users == 943 and ds.num_items == 1682


def test_ml100k_holdout_reads_u_data_the_same_ratings_as_the_folds(ml100k_dir: Path) -> None:
    base = read_ratings(ml100k_dir / "u1.base")
    test = read_ratings(ml100k_dir / "u1.test")
    folds = RawRows(base.users + test.users, base.items + test.items,
                    np.concatenate([base.ratings, test.ratings]),
                    np.concatenate([base.timestamps, test.timestamps]))
    ds = load_ml100k(ml100k_dir, "holdout", seed=0)  # reads and checks u.data
    assert (len(ds.train), len(ds.test), ds.num_users, ds.num_items) == (80000, 20000, 943, 1682)
    users = np.asarray(ds.user_ids)[np.concatenate([ds.train.users, ds.test.users])].tolist()
    items = np.asarray(ds.item_ids)[np.concatenate([ds.train.items, ds.test.items])].tolist()
    split = RawRows(users, items, np.concatenate([ds.train.ratings, ds.test.ratings]),
                    np.concatenate([ds.train.timestamps, ds.test.timestamps]))
    assert multiset(split) == multiset(folds)  # the hold-out split uses the same data set as before


def test_a_truncated_copy_of_u_data_is_refused(ml100k_dir: Path, tmp_path: Path) -> None:
    lines = (ml100k_dir / "u.data").read_text().splitlines(keepends=True)
    write(tmp_path, "".join(lines[:99_000]), "u.data")
    with pytest.raises(DataError, match=r"u\.data: 99,000 ratings .*truncated or damaged"):
        read_ml100k_udata(tmp_path)
    write(tmp_path, "".join(lines[:-1]) + lines[-1][:5], "u.data")  # cut inside the last line
    with pytest.raises(DataError, match=r"u\.data, line 100000, column [23] \((item|rating)\): missing"):
        read_ml100k_udata(tmp_path)

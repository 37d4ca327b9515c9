"""Item features (securefedrec.data.features): readers on small files written here, the matrix, synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from securefedrec.config import ExperimentConfig
from securefedrec.data import load_ml100k, synthetic
from securefedrec.data.features import (
    ML100K_GENRES,
    feature_matrix,
    item_features,
    read_item_feature_file,
    read_ml100k_items,
    read_movies_csv,
    synthetic_features,
    title_words,
    year_bucket,
)
from securefedrec.errors import ConfigError, DataError


def _uitem_line(item: int, title: str, date: str, genres: set[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
    return f"{item}|{title}|{date}||http://x|{flags}\n"


def test_title_words_and_year_buckets() -> None:
    assert title_words("The Star Wars (1977)") == ["star", "wars"]
    assert title_words("Shawshank Redemption, The (1994)") == ["shawshank", "redemption"]
    assert year_bucket(1994) == "year:1990-1994" and year_bucket(1995) == "year:1995-1999"


def test_read_ml100k_items_reads_genres_words_and_the_release_year(tmp_path: Path) -> None:
    path = tmp_path / "u.item"
    path.write_text(_uitem_line(1, "Toy Story (1995)", "01-Jan-1995", {"Animation", "Comedy"})
                    + _uitem_line(2, "Star Wars (1977)", "", {"Action", "Sci-Fi"}), encoding="latin-1")
    raw = read_ml100k_items(path)
    assert raw["1"] == {"word:toy": 1.0, "word:story": 1.0, "year:1995-1999": 1.0, "genre:Animation": 1.0,
                        "genre:Comedy": 1.0}
    assert raw["2"]["year:1975-1979"] == 1.0  # no release date: the title's year


@pytest.mark.parametrize(("line", "match"), [
    ("1|Toy Story (1995)|01-Jan-1995||url|0|1\n", r"u\.item, line 2: expected 24"),
    (_uitem_line(1, "Again (1990)", "01-Jan-1990", set()),
     r"line 2, field 1 \(movie id\): movie 1 is listed twice"),
    (_uitem_line(2, "X (1990)", "Jan 1990", set()), r"line 2, field 3 \(release date\)"),
    (_uitem_line(2, "X (1990)", "01-Jan-1990", set()).replace("|0\n", "|2\n"),
     r"line 2, field 24 \(genre Western\)"),
])
def test_read_ml100k_items_names_the_line_and_field(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "u.item"
    path.write_text(_uitem_line(1, "Toy Story (1995)", "01-Jan-1995", {"Comedy"}) + line, encoding="latin-1")
    with pytest.raises(DataError, match=match):
        read_ml100k_items(path)


def test_read_movies_csv(tmp_path: Path) -> None:
    path = tmp_path / "movies.csv"
    path.write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                    '2,"American President, The (1995)",(no genres listed)\n', encoding="utf-8")
    raw = read_movies_csv(path)
    assert raw["1"] == {"word:toy": 1.0, "word:story": 1.0, "year:1995-1999": 1.0, "genre:Adventure": 1.0,
                        "genre:Animation": 1.0}
    assert raw["2"] == {"word:american": 1.0, "word:president": 1.0, "year:1995-1999": 1.0}
    path.write_text("movieId,title,genres\n1,Toy Story (1995)\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"movies\.csv, line 2: expected 3 columns"):
        read_movies_csv(path)
    path.write_text("id,name\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: expected the header movieId,title,genres"):
        read_movies_csv(path)


def test_read_item_feature_file(tmp_path: Path) -> None:
    path = tmp_path / "tags.csv"
    path.write_text("item_id,feature,value\n# a comment\n10,genre:drama\n10,length,2.5\n\n11,genre:drama,1\n")
    assert read_item_feature_file(path) == {"10": {"genre:drama": 1.0, "length": 2.5},
                                            "11": {"genre:drama": 1.0}}


@pytest.mark.parametrize(("text", "match"), [
    ("1,a\n1,b,x\n", r"line 2, column 3 \(value\): not a number: 'x'"),
    ("1,a\n1,b,inf\n", r"line 2, column 3 \(value\): must be finite"),
    ("1,a\n2,b,1,4\n", r"line 2: expected item_id,feature\[,value\] \(2 or 3 columns\), got 4"),
    ("1,a\n,b\n", r"line 2, column 1 \(item_id\): empty"),
    ("1,a\n2,\n", r"line 2, column 2 \(feature\): empty"),
    ("1,a\n2,b\n1,a,3\n", r"line 3: item '1' has feature 'a' twice \(first on line 1\)"),
    ("# nothing\n", r"no item_id,feature\[,value\] line"),
])
def test_item_feature_file_errors_name_file_line_and_column(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "f.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"f.csv.*{match}"):
        read_item_feature_file(path)
    with pytest.raises(DataError, match="no such item-feature file"):
        read_item_feature_file(tmp_path / "missing.csv")


def test_feature_matrix_maps_onto_the_item_order_and_normalises_each_group() -> None:
    raw = {"a": {"genre:x": 1.0, "genre:y": 1.0, "word:w": 1.0},
           "b": {"genre:x": 1.0, "word:w": 1.0, "word:rare": 1.0},
           "c": {"genre:y": 1.0}}
    feats = feature_matrix(raw, ["c", "z", "b", "a"])  # z has no feature; "word:rare" only one item
    assert feats.names == ("genre:x", "genre:y", "word:w")
    X = feats.matrix
    np.testing.assert_allclose(X[0], [0, 1, 0])  # c: one group, norm 1
    np.testing.assert_array_equal(X[1], 0)
    np.testing.assert_allclose(X[2], [np.sqrt(0.5), 0, np.sqrt(0.5)])  # b: two groups, each 1/sqrt(2)
    np.testing.assert_allclose(X[3], [0.5, 0.5, np.sqrt(0.5)])  # a: genres split their group's weight
    np.testing.assert_allclose(np.linalg.norm(X[[0, 2, 3]], axis=1), 1.0, rtol=1e-6)
    assert feats.without_features().tolist() == [1]
    with pytest.raises(DataError, match="none of the data set's 2 item ids"):
        feature_matrix(raw, ["p", "q"], source="f.csv")
    with pytest.raises(DataError, match="no feature is shared by 2 or more"):
        feature_matrix({"a": {"x": 1.0}, "b": {"y": 1.0}}, ["a", "b"])


def test_synthetic_features_are_noisy_copies_of_the_generators_item_factors() -> None:
    """The replayed factors explain the generated ratings: their item bias column correlates with
    the items' mean rating (a content model has something to learn)."""
    data = synthetic(num_users=400, num_items=60, ratings_per_user=30, seed=5)
    feats = synthetic_features(400, 60, 30, seed=5)
    assert feats.matrix.shape == (60, 9) and feats.names[-1] == "bias:item"
    ratings = data.all_ratings()
    counts = np.bincount(ratings.items, minlength=60)
    mean = np.bincount(ratings.items, ratings.ratings, 60) / np.maximum(counts, 1)
    rated = counts >= 5
    assert np.corrcoef(feats.matrix[rated, -1], mean[rated])[0, 1] > 0.5
    other_seed = synthetic_features(400, 60, 30, seed=6)
    assert np.corrcoef(other_seed.matrix[rated, -1], mean[rated])[0, 1] < 0.4
    np.testing.assert_array_equal(synthetic_features(400, 60, 30, seed=5).matrix, feats.matrix)  # seeded


def test_item_features_picks_the_configured_source(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("0,a\n1,a\n2,b\n1,b\n")
    cfg = ExperimentConfig(synthetic_items=3, item_features=str(path))
    assert item_features(cfg, ["0", "1", "2"]).names == ("a", "b")
    assert item_features(ExperimentConfig(synthetic_items=40, synthetic_users=30),
                         [str(i) for i in range(40)]).source == "synthetic"
    with pytest.raises(ConfigError, match=r"--dataset ml-1m has no item features.*--item-features"):
        item_features(ExperimentConfig(dataset="ml-1m", data_dir=str(tmp_path), split="holdout"), ["1"])


def test_ml100k_features_cover_every_item(ml100k_dir: Path) -> None:
    data = load_ml100k(ml100k_dir, "u1")
    feats = feature_matrix(read_ml100k_items(ml100k_dir / "u.item"), data.item_ids)
    assert feats.matrix.shape[0] == 1682
    assert {f"genre:{g}" for g in ML100K_GENRES if g != "unknown"} <= set(feats.names)
    assert len(feats.without_features()) == 0
    star_wars = data.item_ids.index("50")
    assert feats.matrix[star_wars, feats.names.index("genre:Sci-Fi")] > 0

"""``--dataset file --data-file PATH [--columns ...] [--rating-scale MIN:MAX]`` from the command line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from securefedrec.cli import build_parser, config_from_args, main

TINY = ["--rounds", "2", "--protocol", "plaintext", "--factors", "4", "--sample-rate", "1", "--quiet"]


def movielens_csv(path: Path) -> Path:
    """MovieLens header names in another order than user, item, rating, an extra id column, half stars."""
    lines = ["timestamp,movieId,id,rating,userId"]
    for u in range(6):
        for i in range(8):
            if (u + i) % 3:
                rating = 0.5 * (1 + (u * 3 + i) % 10)
                lines.append(f"{1_000_000 + 10 * u + i},{100 + i},{len(lines)},{rating},{u + 1}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_movielens_csv_trains_with_only_data_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = movielens_csv(tmp_path / "ratings.csv")
    report = tmp_path / "r.json"
    # --data-file alone implies --dataset file
    assert main(["run", "--data-file", str(data), *TINY, "--report", str(report)]) == 0
    out = json.loads(report.read_text())
    assert out["dataset"]["name"] == "ratings.csv"
    assert (out["dataset"]["users"], out["dataset"]["items"]) == (6, 8)
    assert (out["dataset"]["rating_min"], out["dataset"]["rating_max"], out["dataset"]["rating_step"]) == (
        0.5, 5.0, 0.5)
    assert out["dataset"]["rating_scale_inferred"] is True
    assert out["dataset"]["train_ratings"] + out["dataset"]["test_ratings"] == 32
    assert [r["clients"] for r in out["rounds"]] == [6, 6]  # every user trained in both rounds
    assert math.isfinite(out["final"]["rmse"])
    assert out["config"]["data_file"] == str(data)
    assert "final: RMSE" in capsys.readouterr().out


def test_headerless_tsv_and_double_colon_files_with_columns_by_number(tmp_path: Path) -> None:
    rows = [(f"m{i}", f"u{u}", 1 + (u + i) % 5) for u in range(5) for i in range(6)]
    tsv = tmp_path / "r.tsv"
    tsv.write_text("".join(f"{i}\t{u}\t{r}\n" for i, u, r in rows))
    dat = tmp_path / "r.dat"
    dat.write_text("".join(f"{u}::{i}::{r}::0\n" for i, u, r in rows))
    for args in (["--data-file", str(tsv), "--columns", "user=2,item=1,rating=3", "--rating-scale", "1:5"],
                 ["--data-file", str(dat)]):
        report = tmp_path / "r.json"
        assert main(["run", "--dataset", "file", *args, *TINY, "--report", str(report)]) == 0
        s = json.loads(report.read_text())["dataset"]
        assert (s["users"], s["items"], s["rating_min"], s["rating_max"]) == (5, 6, 1.0, 5.0)


def test_toml_takes_the_same_names(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\ndataset = "file"\ndata-file = "r.csv"\ncolumns = "user=a,item=b,rating=c"\n'
                   'rating-scale = "0.5:5"\n')
    config = config_from_args(build_parser().parse_args(["run", "--config", str(cfg)]))
    assert (config.data.data_file, config.data.columns, config.data.rating_scale) == (
        "r.csv", "user=a,item=b,rating=c", "0.5:5")


BAD_FLAGS = [  # (flags, what the one-line error must say)
    (["--dataset", "synthetic", "--data-file", "x.csv"],
     r"data[_-]file.*applies to dataset 'file' only.*not to 'synthetic'"),
    (["--dataset", "ml-100k", "--data-dir", ".", "--columns", "user=1,item=2,rating=3"],
     r"columns.*applies to dataset 'file' only.*not to 'ml-100k'"),
    (["--dataset", "ml-1m", "--data-dir", ".", "--rating-scale", "1:5"],
     r"rating[_-]scale.*applies to dataset 'file'"),
    (["--dataset", "file"], r"data[_-]file.*needs --data-file PATH"),
    (["--dataset", "file", "--data-file", "x.csv", "--data-dir", "."], r"data[_-]dir.*does not apply"),
    (["--dataset", "file", "--data-file", "x.csv", "--split", "u1"], r"split.*per user \(holdout\)"),
    (["--dataset", "file", "--data-file", "x.csv", "--columns", "user=1,item=2"],
     r"columns.*no rating column"),
    (["--dataset", "file", "--data-file", "x.csv", "--rating-scale", "5:1"],
     r"rating[_-]scale.*MIN must be below"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS)
def test_flags_without_their_mode_or_malformed_are_one_line_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *flags, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and err.count("\n") == 1


def test_file_errors_name_file_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = movielens_csv(tmp_path / "ratings.csv")
    lines = data.read_text().splitlines()
    lines[16] = lines[16].rsplit(",", 2)[0] + ",abc," + lines[16].rsplit(",", 1)[1]  # line 17's rating
    data.write_text("\n".join(lines) + "\n")
    report = tmp_path / "r.json"
    assert main(["run", "--dataset", "file", "--data-file", str(data), *TINY, "--report", str(report)]) == 2
    assert "ratings.csv, line 17, column 'rating': 'abc' is not a number" in capsys.readouterr().err
    movielens_csv(data)
    assert main(["run", "--dataset", "file", "--data-file", str(data), "--rating-scale", "1:5", *TINY,
                 "--report", str(report)]) == 2
    assert re.search(r"ratings\.csv, line \d+, column 'rating': rating 0\.5 is outside the scale 1\.\.5 "
                     r"given by --rating-scale", capsys.readouterr().err)
    assert main(["run", "--dataset", "file", "--data-file", str(tmp_path / "none.csv"), *TINY]) == 2
    assert "none.csv: ratings file not found" in capsys.readouterr().err
    assert not report.exists()

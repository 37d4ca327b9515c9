"""The configuration in sections: the flat-key table, the sections' own checks, TOML tables, the flat form."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from securefedrec.cli import build_parser, config_from_args
from securefedrec.config import (
    FLAT_KEYS,
    SECTIONS,
    CompressionConfig,
    DataConfig,
    ExperimentConfig,
    FederationConfig,
    FieldError,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    Section,
    ServerConfig,
    load_toml,
    read_toml,
)
from securefedrec.errors import ConfigError

DEFAULT_DICT = {
    "dataset": "synthetic", "data_dir": None, "split": "holdout", "synthetic_users": 500,
    "synthetic_items": 300, "synthetic_ratings_per_user": 30, "data_file": None, "columns": None,
    "rating_scale": None, "feedback": "explicit", "eval_negatives": 99, "item_features": None,
    "protocol": "secagg+", "threat_model": "default", "rounds": 30, "sample_rate": 0.2,
    "dropout": 0.0, "threshold_fraction": 0.5, "ring_bits": 32, "neighbors": None, "corruption_rate": 0.05,
    "submodel": False, "item_epsilon": 4.0,
    "compression": "none",
    "model": "mf", "factors": 32, "lam_user": 0.1, "lam_item": 0.15, "lam_bias": 0.05, "init_std": 0.01,
    "local_epochs": 1, "local_lr": 1.0, "update_clip": 16.0, "loss": "bce", "negatives": 4,
    "weight_decay": 0.01, "local_optimizer": "sgd", "mlp_layers": "64,32,16", "personalize": False,
    "personal_decay": 0.0, "model_compression": "none", "fusion": None, "fusion_lr": 0.1,
    "fusion_reg": None, "fusion_settings": None, "content_weighting": "rating", "dp": "none", "epsilon": None,
    "delta": 1e-05,
    "clip": 1.0, "noise_multiplier": None, "accountant": "rdp", "dp_mechanism": "gaussian", "silos": None,
    "dp_batch_size": 256, "server_optimizer": "fedadam", "server_lr": None, "server_decay": 0.0,
    "eval_every": 1, "seed": 0, "device": "auto",
}
"""``to_dict()`` of the default config as the flat class wrote it (key order included: reports keep it)."""


def _cli(*argv: str) -> ExperimentConfig:
    return config_from_args(build_parser({}).parse_args(["run", *argv]))


# ---- the table ----------------------------------------------------------------------------------------
def test_the_table_is_a_bijection_between_flat_keys_and_section_fields() -> None:
    fields = [(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert sorted(FLAT_KEYS.values()) == sorted(fields)  # every field once, nothing else
    assert len(set(FLAT_KEYS.values())) == len(FLAT_KEYS)
    for key, (section, field) in FLAT_KEYS.items():
        assert SECTIONS[section].key(field) == key  # and back
    assert list(SECTIONS) == [f.name for f in dataclasses.fields(ExperimentConfig)]
    assert ExperimentConfig.field_names() == tuple(FLAT_KEYS) == tuple(DEFAULT_DICT)


def test_every_flat_key_reads_and_writes_its_section_field() -> None:
    config = ExperimentConfig()
    for key, (section, field) in FLAT_KEYS.items():
        assert getattr(getattr(config, section), field) == config.to_dict()[key]


def test_sections_are_frozen_and_keyword_only() -> None:
    for cls in SECTIONS.values():
        assert issubclass(cls, Section) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            cls(1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExperimentConfig().federation.rounds = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExperimentConfig().run = RunConfig()  # type: ignore[misc]


# ---- the flat form: reports and checkpoints -----------------------------------------------------------
def test_to_dict_of_the_default_config_is_unchanged() -> None:
    flat = ExperimentConfig().to_dict()
    assert flat == DEFAULT_DICT and list(flat) == list(DEFAULT_DICT)
    assert ExperimentConfig.defaults() == DEFAULT_DICT


def test_to_dict_of_a_non_default_config_is_unchanged() -> None:
    config = ExperimentConfig(
        dataset="ml-100k", data_dir="d", split="u1", protocol="secagg", threat_model="malicious", rounds=7,
        sample_rate=0.5, dropout=0.1, threshold_fraction=0.6, ring_bits=40, neighbors=5, compression="q16",
        factors=8, lam_user=0.2, local_epochs=2, local_lr=0.5, update_clip=4, dp="user", epsilon=4,
        delta=1e-6, clip=0.5, accountant="prv", server_optimizer="fedyogi", server_lr=0.01, server_decay=0.1,
        eval_every=3, seed=9, device="cpu")
    assert config.to_dict() == {
        "dataset": "ml-100k", "data_dir": "d", "split": "u1", "synthetic_users": 500, "synthetic_items": 300,
        "synthetic_ratings_per_user": 30, "data_file": None, "columns": None, "rating_scale": None,
        "feedback": "explicit", "eval_negatives": 99, "item_features": None,
        "protocol": "secagg", "threat_model": "malicious", "rounds": 7, "sample_rate": 0.5, "dropout": 0.1,
        "threshold_fraction": 0.6, "ring_bits": 40, "neighbors": 5, "corruption_rate": 0.05,
        "submodel": False, "item_epsilon": 4.0,
        "compression": "q16",
        "model": "mf",
        "factors": 8, "lam_user": 0.2, "lam_item": 0.15, "lam_bias": 0.05, "init_std": 0.01,
        "local_epochs": 2, "local_lr": 0.5, "update_clip": 4.0, "loss": "bce", "negatives": 4,
        "weight_decay": 0.01, "local_optimizer": "sgd", "mlp_layers": "64,32,16", "personalize": False,
        "personal_decay": 0.0, "model_compression": "none", "fusion": None, "fusion_lr": 0.1,
        "fusion_reg": None, "fusion_settings": None, "content_weighting": "rating", "dp": "user",
        "epsilon": 4.0,
        "delta": 1e-06,
        "clip": 0.5, "noise_multiplier": None, "accountant": "prv", "dp_mechanism": "gaussian", "silos": None,
        "dp_batch_size": 256, "server_optimizer": "fedyogi", "server_lr": 0.01, "server_decay": 0.1,
        "eval_every": 3, "seed": 9, "device": "cpu",
    }
    assert isinstance(config.privacy.epsilon, float) and isinstance(config.model.update_clip, float)
    assert ExperimentConfig(**config.to_dict()) == config  # the flat form builds the same config


# ---- construction: flat keys, sections, replace ------------------------------------------------------
def test_flat_keywords_and_sections_build_the_same_config() -> None:
    flat = ExperimentConfig(protocol="secagg+", rounds=3, dp="user", epsilon=4.0, model="mf",
                            compression="q8", server_lr=0.1)
    parts = ExperimentConfig(federation=FederationConfig(protocol="secagg+", rounds=3),
                             privacy=PrivacyConfig(mode="user", epsilon=4.0), model=ModelConfig(name="mf"),
                             compression=CompressionConfig(codec="q8"), server=ServerConfig(lr=0.1))
    mixed = ExperimentConfig(privacy=PrivacyConfig(mode="user", epsilon=4.0), rounds=3, compression="q8",
                             server_lr=0.1)
    assert flat == parts == mixed
    assert hash(flat) == hash(parts)
    assert (flat.federation.rounds, flat.privacy.mode, flat.model.name, flat.compression.codec) == (
        3, "user", "mf", "q8")


def test_replace_takes_flat_keys_and_sections() -> None:
    config = ExperimentConfig(rounds=3, dp="user", epsilon=4.0)
    longer = config.replace(rounds=5, server_lr=0.5)
    assert (longer.federation.rounds, longer.server.lr, longer.privacy.epsilon) == (5, 0.5, 4.0)
    assert config.federation.rounds == 3  # the original is untouched
    assert config.replace(dp="none").privacy == PrivacyConfig(mode="none", epsilon=4.0)  # the same run, no DP
    assert config.replace(data=DataConfig(synthetic_users=80)).data.synthetic_users == 80
    assert config.replace(model=ModelConfig(factors=4)).model.factors == 4
    with pytest.raises(ConfigError, match=r"^rounds: must be >= 1"):
        config.replace(rounds=0)


@pytest.mark.parametrize("build", [
    lambda: ExperimentConfig(privacy=PrivacyConfig(mode="user", epsilon=4.0), epsilon=2.0),
    lambda: ExperimentConfig().replace(privacy=PrivacyConfig(), epsilon=2.0),
    lambda: dataclasses.replace(ExperimentConfig(dp="user", epsilon=4.0), epsilon=2.0),
])
def test_a_flat_key_and_its_section_together_are_refused(build: Any) -> None:
    with pytest.raises(FieldError, match=r"^epsilon: given both on its own and inside privacy="):
        build()


def test_unknown_keys_and_wrong_sections_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key 'round'"):
        ExperimentConfig(round=3)
    with pytest.raises(ConfigError, match="unknown key 'round'"):
        ExperimentConfig().replace(round=3)
    with pytest.raises(ConfigError, match=r"^privacy: expected PrivacyConfig"):
        ExperimentConfig(privacy=RunConfig())  # type: ignore[arg-type]


# ---- each section checks its own fields, naming the flat key (the flag) ------------------------------
@pytest.mark.parametrize(("section", "values", "says"), [
    (DataConfig, {"dataset": "nope"}, "dataset: must be one of"),
    (DataConfig, {"synthetic_users": 0}, "synthetic_users: must be >= 1, got 0"),
    (DataConfig, {"dataset": "ml-100k"}, "dataset: ml-100k needs --data-dir"),
    (FederationConfig, {"sample_rate": 2}, "sample_rate: must be in (0, 1], got 2.0"),
    (FederationConfig, {"rounds": "3"}, "rounds: expected int, got '3' (str)"),
    (FederationConfig, {"threat_model": "malicious", "protocol": "plaintext"}, "threat_model: applies to"),
    (ModelConfig, {"name": "nope"}, "model: must be one of mf"),
    (ModelConfig, {"factors": 2.0}, "factors: expected int, got 2.0 (float)"),
    (PrivacyConfig, {"mode": "gaussian"}, "dp: must be one of none, user, record"),
    (PrivacyConfig, {"batch_size": 0}, "dp_batch_size: must be >= 1"),
    (PrivacyConfig, {"mode": "record", "epsilon": 1.0}, "silos: dp 'record' is cross-silo DP-SGD"),
    (PrivacyConfig, {"mechanism": "skellam"}, "dp_mechanism: skellam is the integer-noise form"),
    (PrivacyConfig, {"epsilon": True}, "epsilon: expected float | None, got True (bool)"),
    (CompressionConfig, {"codec": "zz"}, "compression: unknown 'zz'"),
    (ServerConfig, {"lr": float("inf")}, "server_lr: must be > 0 and finite"),
    (ServerConfig, {"optimizer": "sgd"}, "server_optimizer: must be one of"),
    (RunConfig, {"device": "tpu"}, "device: must be one of auto, cpu, cuda"),
    (RunConfig, {"eval_every": 0}, "eval_every: must be >= 1"),
])
def test_each_section_checks_its_fields(section: type[Section], values: dict[str, Any], says: str) -> None:
    with pytest.raises(FieldError) as info:
        section(**values)
    assert str(info.value).startswith(says), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("argv", "says"), [
    (["--sample-rate", "2"], "--sample-rate: must be in (0, 1], got 2.0"),
    (["--dp", "gaussian"], "invalid choice"),
    (["--server-lr", "-1"], "--server-lr: must be > 0 and finite"),
    (["--dp", "user", "--epsilon", "1", "--dp-batch-size", "0"], "--dp-batch-size: must be >= 1"),
    (["--compression", "zz"], "--compression: unknown 'zz'"),
    (["--protocol", "secagg+", "--compression", "topk:0.1"], "--compression: 'topk:0.1' cannot be used"),
    (["--dp", "user", "--epsilon", "1", "--dp-mechanism", "skellam", "--compression", "q8"],
     "--dp-mechanism: skellam hands the protocol integer units"),
])
def test_a_bad_value_names_the_flag(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        _cli(*argv)
    except SystemExit:  # argparse's own choices
        assert says in capsys.readouterr().err
    except ConfigError as exc:
        assert says in str(exc), str(exc)
    else:
        pytest.fail(f"{argv} was accepted")


def test_the_mode_bound_refusals_still_fire(tmp_path: Path) -> None:
    with pytest.raises(ConfigError,
                       match=r"^config: epsilon: applies only with --dp user or --dp record; dp is 'none'"):
        ExperimentConfig.from_mapping({"epsilon": 1.0})
    with pytest.raises(ConfigError, match=r"^--neighbors: applies only with --protocol secagg or secagg\+"):
        _cli("--protocol", "plaintext", "--neighbors", "3")
    with pytest.raises(ConfigError,
                       match=r"^--corruption-rate: applies only with --protocol secagg or secagg\+"):
        _cli("--protocol", "paillier", "--corruption-rate", "0.1")
    with pytest.raises(ConfigError, match=r"^--corruption-rate: must be in \[0, 0.5\)"):
        _cli("--corruption-rate", "0.5")
    with pytest.raises(ConfigError, match=r"^--synthetic-users: applies only with --dataset synthetic"):
        _cli("--dataset", "ml-100k", "--data-dir", "d", "--synthetic-users", "5")
    with pytest.raises(ConfigError, match=r"^--dp-batch-size: applies only with --dp record; --dp is 'user'"):
        _cli("--dp", "user", "--epsilon", "1", "--dp-batch-size", "8")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[privacy]\nclip = 2.0\n")
    with pytest.raises(ConfigError, match=r"\[privacy\] clip: applies only with --dp user or --dp record"):
        _cli("--config", str(cfg))
    # built directly (not from_mapping), a budget without a mode is kept: replace(dp="none") runs without DP
    assert ExperimentConfig(epsilon=1.0).privacy.epsilon == 1.0


# ---- TOML: flat, [run], sections ----------------------------------------------------------------------
FLAT_TOML = """\
rounds = 4
sample-rate = 0.5
dp = "user"
epsilon = 3
dp-mechanism = "gaussian"
model = "mf"
factors = 6
compression = "q8"
server-optimizer = "fedyogi"
server_lr = 0.1
seed = 7
synthetic-users = 90
"""

SECTIONED_TOML = """\
[data]
synthetic-users = 90

[federation]
rounds = 4
sample-rate = 0.5

[model]
name = "mf"
factors = 6

[privacy]
mode = "user"
epsilon = 3
mechanism = "gaussian"

[compression]
codec = "q8"

[server]
optimizer = "fedyogi"
lr = 0.1

[run]
seed = 7
"""


def test_sectioned_flat_and_run_tables_give_the_same_config(tmp_path: Path) -> None:
    flat, run, sectioned = tmp_path / "flat.toml", tmp_path / "run.toml", tmp_path / "sections.toml"
    flat.write_text(FLAT_TOML)
    run.write_text("[run]\n" + FLAT_TOML)
    sectioned.write_text(SECTIONED_TOML)
    configs = [ExperimentConfig.from_toml(p) for p in (flat, run, sectioned)]
    configs += [_cli("--config", str(p)) for p in (flat, run, sectioned)]
    assert all(c == configs[0] for c in configs)
    expected = ExperimentConfig(rounds=4, sample_rate=0.5, dp="user", epsilon=3.0, factors=6,
                                compression="q8", server_optimizer="fedyogi", server_lr=0.1, seed=7,
                                synthetic_users=90)
    assert configs[0] == expected
    assert load_toml(sectioned) == load_toml(flat)


def test_section_tables_also_take_the_flat_keys_of_their_fields(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('rounds = 2\n[privacy]\ndp = "user"\ndp-mechanism = "gaussian"\nepsilon = 1.0\n'
                   '[server]\nserver-lr = 0.3\n')
    config = ExperimentConfig.from_toml(cfg)
    assert (config.federation.rounds, config.privacy.mode, config.server.lr) == (2, "user", 0.3)


def test_toml_errors_name_the_table_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[federation]\nsample-rate = 2.0\n")
    values, labels = read_toml(cfg)
    assert values == {"sample_rate": 2.0} and labels == {"sample_rate": f"{cfg}: [federation] sample-rate"}
    at = re.escape(str(cfg))
    with pytest.raises(ConfigError, match=rf"^{at}: \[federation\] sample-rate: must be in \(0, 1\], got 2"):
        _cli("--config", str(cfg))
    with pytest.raises(ConfigError, match=rf"^{at}: \[federation\] sample-rate: must be in"):
        ExperimentConfig.from_toml(cfg)
    cfg.write_text("[model]\nrounds = 3\n")
    with pytest.raises(ConfigError, match=r"\[model\] unknown key 'rounds'; it belongs in \[federation\]"):
        read_toml(cfg)
    cfg.write_text("[model]\nmodel_name = 'mf'\n")
    with pytest.raises(ConfigError, match=r"\[model\] unknown key 'model_name'; keys of \[model\]: name, "):
        read_toml(cfg)
    cfg.write_text("[tool]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[tool\]; tables: \[run\] \(flat keys\) and the"):
        read_toml(cfg)
    cfg.write_text("rounds = 2\n[federation]\nrounds = 3\n")
    with pytest.raises(ConfigError, match=rf"{at}: \[federation\] rounds: sets 'rounds' a second time "
                                          rf"\(also {at}: rounds\)"):
        read_toml(cfg)
    cfg.write_text("[privacy]\ndp = 'user'\nmode = 'user'\n")
    with pytest.raises(ConfigError, match="sets 'dp' a second time"):
        read_toml(cfg)
    cfg.write_text("[run]\nround = 3\n")
    with pytest.raises(ConfigError, match=rf"^{at}: unknown key 'round'"):
        read_toml(cfg)
    cfg.write_text("rounds = 3\nrounds = 4\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2"):  # tomllib's line and column
        read_toml(cfg)


def test_a_flag_overrides_a_section_value_and_is_named_as_a_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[federation]\nrounds = 4\n[privacy]\nmode = 'user'\nepsilon = 2.0\n")
    assert _cli("--config", str(cfg), "--rounds", "6").federation.rounds == 6
    with pytest.raises(ConfigError, match=r"^--epsilon: must be > 0"):
        _cli("--config", str(cfg), "--epsilon", "0")

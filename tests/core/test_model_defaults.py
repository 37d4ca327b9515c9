"""Each model's own default training (names.MODEL_DEFAULTS): resolved when not given, a given value wins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from securefedrec.cli import build_parser, config_from_args, main
from securefedrec.config import ExperimentConfig, ModelConfig
from securefedrec.flower.settings import experiment_config
from securefedrec.models.names import MODEL_DEFAULTS, MODEL_FEEDBACK, MODEL_NAMES, MODEL_SETTINGS


def _cli(*argv: str) -> ExperimentConfig:
    return config_from_args(build_parser({}).parse_args(["run", *argv]))


def _settings(config: ExperimentConfig) -> dict[str, Any]:
    flat = config.to_dict()
    return {key: flat[key] for key in MODEL_SETTINGS}


def _feedback(model: str) -> str:
    return MODEL_FEEDBACK[model][-1]  # implicit where the model takes it


def test_the_table_has_every_model_and_setting_and_mf_keeps_the_sections_defaults() -> None:
    assert tuple(MODEL_DEFAULTS) == MODEL_NAMES
    assert all(tuple(row) == MODEL_SETTINGS for row in MODEL_DEFAULTS.values())
    defaults = ExperimentConfig.defaults()
    assert dict(MODEL_DEFAULTS["mf"]) == {key: defaults[key] for key in MODEL_SETTINGS}
    # the benchmark's figures, now the runs' own
    assert dict(MODEL_DEFAULTS["fism"]) == {"local_lr": 5.0, "local_epochs": 2, "weight_decay": 0.0,
                                            "server_lr": None, "rounds": 60}
    assert MODEL_DEFAULTS["ncf"]["server_lr"] == 0.03 and MODEL_DEFAULTS["implicit-mf"]["local_lr"] == 30.0


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_a_setting_not_given_is_the_model_s_own(model: str) -> None:
    expected = dict(MODEL_DEFAULTS[model])
    assert _settings(ExperimentConfig(feedback=_feedback(model), model=model)) == expected
    assert _settings(_cli("--feedback", _feedback(model), "--model", model)) == expected


def test_the_default_model_of_implicit_feedback_takes_its_own() -> None:
    assert _settings(ExperimentConfig(feedback="implicit")) == dict(MODEL_DEFAULTS["implicit-mf"])


def test_explicit_mf_is_unchanged() -> None:
    assert ExperimentConfig() == ExperimentConfig(model="mf") == ExperimentConfig(
        local_lr=1.0, local_epochs=1, weight_decay=0.01, server_lr=None, rounds=30)
    assert _settings(_cli()) == dict(MODEL_DEFAULTS["mf"])


def test_a_given_setting_wins_from_every_source(tmp_path: Path) -> None:
    given = {"local_lr": 7.0, "local_epochs": 3, "weight_decay": 0.5, "server_lr": 0.2, "rounds": 4}
    base = {"feedback": "implicit", "model": "fism"}
    kwargs = ExperimentConfig(**base, **given)
    flags = _cli("--feedback", "implicit", "--model", "fism", "--local-lr", "7", "--local-epochs", "3",
                 "--weight-decay", "0.5", "--server-lr", "0.2", "--rounds", "4")
    toml = tmp_path / "run.toml"
    toml.write_text('feedback = "implicit"\nmodel = "fism"\n'
                    + "".join(f"{key.replace('_', '-')} = {value}\n" for key, value in given.items()))
    flower, _ = experiment_config({**base, **{key.replace("_", "-"): v for key, v in given.items()}})
    for config in (kwargs, flags, ExperimentConfig.from_toml(toml), _cli("--config", str(toml)), flower):
        assert _settings(config) == given
    # one given setting: the others are still the model's
    one = _cli("--feedback", "implicit", "--model", "fism", "--local-lr", "7")
    assert _settings(one) == {**MODEL_DEFAULTS["fism"], "local_lr": 7.0}
    # a flag over the file's value; the file's over the model's
    toml.write_text('feedback = "implicit"\nmodel = "ncf"\nlocal-lr = 2.0\n')
    assert _cli("--config", str(toml), "--local-lr", "3").model.local_lr == 3.0
    assert _settings(_cli("--config", str(toml))) == {**MODEL_DEFAULTS["ncf"], "local_lr": 2.0}
    # None given for the server's lr is the optimizer's own, not ncf's 0.03
    assert ExperimentConfig(feedback="implicit", model="ncf", server_lr=None).server.lr is None


def test_flower_s_default_sentinel_takes_the_model_s_own() -> None:
    config, _ = experiment_config({"feedback": "implicit", "model": "fism", "local-lr": "default",
                                   "rounds": "default", "server-lr": "default", "local-epochs": 1})
    assert _settings(config) == {**MODEL_DEFAULTS["fism"], "local_epochs": 1}


def test_the_recorded_config_holds_the_values_used_and_rebuilds_the_run() -> None:
    config = ExperimentConfig(feedback="implicit", model="fism")
    flat = config.to_dict()
    assert (flat["local_lr"], flat["local_epochs"], flat["weight_decay"], flat["rounds"]) == (5.0, 2, 0.0, 60)
    rebuilt = ExperimentConfig(**flat)
    assert rebuilt == config
    # every value of the record is given: another model keeps them (a record reproduces its run)
    assert rebuilt.replace(model="ncf").model.local_lr == 5.0


def test_replace_resolves_again_only_what_was_not_given() -> None:
    implicit = ExperimentConfig(feedback="implicit")
    assert _settings(implicit.replace(model="ncf")) == dict(MODEL_DEFAULTS["ncf"])
    assert _settings(implicit.replace(model="ncf").replace(model="fism")) == dict(MODEL_DEFAULTS["fism"])
    pinned = ExperimentConfig(feedback="implicit", local_lr=2.0).replace(model="ncf")
    assert _settings(pinned) == {**MODEL_DEFAULTS["ncf"], "local_lr": 2.0}
    assert implicit.replace(model="ncf", rounds=5).replace(model="fism").federation.rounds == 5
    assert implicit.replace(seed=3).model.local_lr == MODEL_DEFAULTS["implicit-mf"]["local_lr"]


def test_a_section_given_whole_is_taken_as_written() -> None:
    config = ExperimentConfig(feedback="implicit", model=ModelConfig(name="fism"))
    assert config.model.local_lr == ModelConfig().local_lr  # the section's own value
    assert config.federation.rounds == MODEL_DEFAULTS["fism"]["rounds"]  # its section was not given


def test_the_report_records_the_resolved_values(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    argv = ["run", "--feedback", "implicit", "--split", "loo", "--model", "ncf", "--synthetic-users", "30",
            "--synthetic-items", "40", "--synthetic-ratings-per-user", "8", "--factors", "4", "--rounds", "1",
            "--protocol", "plaintext", "--sample-rate", "1", "--device", "cpu", "--quiet",
            "--report", str(report)]
    assert main(argv) == 0
    recorded = json.loads(report.read_text())["config"]
    assert {key: recorded[key] for key in MODEL_SETTINGS} == {**MODEL_DEFAULTS["ncf"], "rounds": 1}


def test_resume_refuses_a_setting_that_now_differs(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, report = tmp_path / "c.npz", tmp_path / "r.json"
    argv = ["run", "--feedback", "implicit", "--split", "loo", "--synthetic-users", "30", "--synthetic-items",
            "40", "--synthetic-ratings-per-user", "8", "--factors", "4", "--protocol", "plaintext",
            "--sample-rate", "1", "--device", "cpu", "--quiet", "--report", str(report),
            "--checkpoint", str(ckpt)]
    assert main([*argv, "--rounds", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--rounds", "2", "--resume", "--local-lr", "1"]) == 2
    assert "local_lr: checkpoint 30.0 vs run 1.0" in capsys.readouterr().err
    assert main([*argv, "--rounds", "2", "--resume"]) == 0  # the same defaults: it continues
    assert len(json.loads(report.read_text())["rounds"]) == 2


# ---- --fusion: each member its own ------------------------------------------------------------------
LOCAL = ("local_lr", "local_epochs", "weight_decay")
FUSED = "implicit-mf,ncf,fism"


def _own(config: ExperimentConfig, member: str) -> dict[str, Any]:
    model = config.member(member).model
    return {key: getattr(model, key) for key in LOCAL}


def test_each_fusion_member_takes_its_own_defaults() -> None:
    config = ExperimentConfig(feedback="implicit", split="loo", fusion=FUSED)
    for member in FUSED.split(","):
        assert _own(config, member) == {key: MODEL_DEFAULTS[member][key] for key in LOCAL}
    # the run-wide settings: the most rounds of the members, their server lr where they agree
    assert (config.federation.rounds, config.server.lr) == (60, None)
    assert ExperimentConfig(feedback="implicit", split="loo", fusion="ncf,popularity").server.lr is None
    ncf_alone = ExperimentConfig(feedback="implicit", split="loo", fusion="ncf")
    assert (ncf_alone.server.lr, ncf_alone.federation.rounds) == (0.03, 30)
    # members whose own settings are the shared ones (explicit data's) record none: as before
    explicit = ExperimentConfig(fusion="mf,popularity")
    assert explicit.model.fusion_settings is None
    assert _own(explicit, "popularity") == {key: MODEL_DEFAULTS["mf"][key] for key in LOCAL}


def test_a_given_setting_applies_to_every_member_and_a_member_s_own_wins() -> None:
    shared = _cli("--feedback", "implicit", "--split", "loo", "--fusion", FUSED, "--local-lr", "3")
    for member in FUSED.split(","):
        assert _own(shared, member) == {"local_lr": 3.0, "local_epochs": 2, "weight_decay": 0.0}
    own = _cli("--feedback", "implicit", "--split", "loo", "--fusion", FUSED, "--local-lr", "3",
               "--fusion-settings", "ncf:local_lr=0.5,local_epochs=4")
    assert _own(own, "ncf") == {"local_lr": 0.5, "local_epochs": 4, "weight_decay": 0.0}
    assert _own(own, "fism") == {"local_lr": 3.0, "local_epochs": 2, "weight_decay": 0.0}
    flower, _ = experiment_config({"feedback": "implicit", "split": "loo", "fusion": FUSED,
                                   "fusion-settings": "default"})
    assert _own(flower, "fism") == {key: MODEL_DEFAULTS["fism"][key] for key in LOCAL}


def test_the_fusion_s_recorded_config_rebuilds_each_member_s_settings() -> None:
    config = _cli("--feedback", "implicit", "--split", "loo", "--fusion", FUSED, "--local-epochs", "1")
    assert config.model.fusion_settings == ("implicit-mf:local_lr=30.0,weight_decay=0.0;"
                                            "ncf:local_lr=10.0,weight_decay=0.0;fism:local_lr=5.0,weight_decay=0.0")
    rebuilt = ExperimentConfig(**config.to_dict())
    assert rebuilt == config
    assert all(_own(rebuilt, m) == _own(config, m) for m in FUSED.split(","))
    # another fusion: the settings not given are its members' own again; the given epochs stay
    other = config.replace(fusion="ncf,popularity")
    assert _own(other, "popularity") == {"local_lr": 1.0, "local_epochs": 1, "weight_decay": 0.01}
    assert _own(other, "ncf") == {"local_lr": 10.0, "local_epochs": 1, "weight_decay": 0.0}


@pytest.mark.parametrize("text, says", [
    ("fism:local_lr=0", "local_lr must be > 0"), ("fism:local_epochs=1.5", "local_epochs must be an integer"),
    ("mf:local_lr=2", "not a member of --fusion"), ("fism:factors=2", "expected one each of"),
    ("fism", "expected MEMBER:SETTING=VALUE"),
])
def test_bad_fusion_settings_are_refused_naming_the_flag(text: str, says: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--feedback", "implicit", "--split", "loo", "--fusion", FUSED,
                 "--fusion-settings", text]) == 2
    err = capsys.readouterr().err
    assert "--fusion-settings" in err and says in err
    assert main(["run", "--fusion-settings", "mf:local_lr=2"]) == 2
    assert "applies only with --fusion" in capsys.readouterr().err


def test_each_member_trains_at_its_own_step_and_epochs() -> None:
    from securefedrec import Simulation
    from securefedrec.data import synthetic
    from securefedrec.models.fusion import Fusion

    data = synthetic(num_users=20, num_items=30, ratings_per_user=8, seed=1, split="loo", feedback="implicit")
    config = ExperimentConfig(feedback="implicit", split="loo", fusion="implicit-mf,ncf", factors=4,
                              rounds=1, protocol="plaintext", sample_rate=1.0, device="cpu",
                              fusion_settings="ncf:local_lr=0.7")
    sim = Simulation(config, dataset=data)
    assert isinstance(sim.model, Fusion)
    seen: dict[str, tuple[int, float]] = {}
    for member in sim.model.members:
        def spy(*args: Any, _train: Any = member.train, _name: str = member.name, **kwargs: Any) -> Any:
            seen[_name] = (args[3], args[4])  # (global, data, client_users, epochs, lr, ...)
            return _train(*args, **kwargs)
        member.train = spy  # type: ignore[method-assign]
    sim.run_round()
    assert seen == {"implicit-mf": (2, 30.0), "ncf": (2, 0.7)}
    assert [m.hyper.weight_decay for m in sim.model.members] == [0.0, 0.0]  # type: ignore[attr-defined]

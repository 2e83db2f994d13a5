from __future__ import annotations

import re

import pytest

from imgcls.cli import main
from imgcls.config import ConfigError, all_keys, build_config, from_dict, list_presets, to_dict
from imgcls.engine.build import check_config


def test_overrides_are_typed():
    cfg = build_config(
        "quickstart",
        [
            "training.epochs=5",
            "training.optimizer.lr=1e-3",
            "model.pretrained=true",
            "training.unfreeze_epochs=[2,4]",
            "data.image_size=null",
        ],
    )
    assert cfg.training.epochs == 5 and isinstance(cfg.training.epochs, int)
    assert cfg.training.optimizer.lr == pytest.approx(1e-3)
    assert cfg.model.pretrained is True
    assert cfg.training.unfreeze_epochs == [2, 4]
    assert cfg.data.image_size is None
    # an int where a float is expected is fine; a path string for pretrained too
    assert build_config(None, ["training.optimizer.lr=1"]).training.optimizer.lr == 1.0
    assert build_config(None, ["model.pretrained=/tmp/w.safetensors"]).model.pretrained == "/tmp/w.safetensors"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("training.epochs=five", "expected an integer"),
        ("training.epochs=1.5", "expected an integer"),
        ("training.amp=maybe", "expected true or false"),
        ("data.loader=gpu", "Valid values: torch, device"),
        ("training.unfreeze_epochs=3", "expected a list"),
        ("training=3", "is a section"),
        ("training.epochs", "key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_config("quickstart", [override])
    assert fragment in str(e.value)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        build_config(None, ["model.nam=x"])
    msg = str(e.value)
    assert "unknown config key 'model.nam'" in msg and "'model.name'" in msg
    assert "Valid keys in 'model': name, pretrained" in msg
    with pytest.raises(ConfigError, match="training.optimizer.lr"):
        build_config(None, ["training.optimizer.lrr=0.1"])


def test_registry_names_are_validated_before_work():
    for override, valid in [
        ("model.name=resnet19", "resnet18"),
        ("data.name=cifar11", "cifar10"),
        ("training.optimizer.name=adamx", "adamw"),
        ("training.scheduler.name=cosin", "cosine"),
    ]:
        cfg = build_config(None, [override])
        with pytest.raises(ConfigError) as e:
            check_config(cfg)  # registry names are checked where the registries are
        assert valid in str(e.value)


def test_presets_load_and_round_trip():
    assert {"quickstart", "cifar10_resnet18", "cifar10_modern"} <= set(list_presets())
    for name in list_presets():
        cfg = build_config(name)
        check_config(cfg)
        assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)
    modern = build_config("cifar10_modern")  # inherits from cifar10_resnet18 through `base`
    assert modern.model.name == "resnet18" and modern.training.optimizer.name == "adamw"
    with pytest.raises(ConfigError, match="quickstart"):
        build_config("quickstar")


def test_cli_config_show(capsys):
    assert main(["config", "show", "quickstart", "training.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "name: digits" in out


def test_cli_unknown_key_exit_code(capsys):
    assert main(["train", "model.nam=x"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "unknown config key" in err


def test_dotted_keys_set_one_entry_of_a_mapping_field():
    cfg = build_config(
        None,
        [
            "training.loss.name=focal",
            "training.loss.kwargs.gamma=3",
            "training.loss.kwargs.alpha=0.25",
            "model.kwargs.foo=1",
        ],
    )
    assert cfg.training.loss.kwargs == {"gamma": 3, "alpha": 0.25} and cfg.model.kwargs == {"foo": 1}
    # one key is added to (or replaces one key of) what a preset or an earlier override set; the whole mapping at once
    # replaces it
    cfg = build_config("cpu_speedrun", ["model.kwargs.bn_momentum=0.5", "training.loss.kwargs={gamma: 1.0}"])
    assert cfg.model.kwargs == {"bn_scale": False, "bn_momentum": 0.5} and cfg.training.loss.kwargs == {"gamma": 1.0}
    assert "training.loss.kwargs" in all_keys() and "training.loss.focal_gamma" not in all_keys()
    with pytest.raises(ConfigError, match=r"'model.kwargs' is a mapping.*model.kwargs.<key>=\.\.\."):
        build_config(None, ["model.kwargs.a.b=1"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(None, ["training.loss.kwargs=3"])


def test_legacy_loss_keys_of_saved_configs_move_to_kwargs():
    def saved(name, gamma, alpha):  # the loss section as versions before training.loss.kwargs wrote it
        tree = to_dict(build_config(None, [f"training.loss.name={name}"]))
        tree["training"]["loss"] = {
            "name": name,
            "label_smoothing": 0.1,
            "focal_gamma": gamma,
            "focal_alpha": alpha,
            "class_weights": None,
        }
        return tree

    focal = from_dict(saved("focal", 3.0, 0.25)).training.loss
    assert focal.name == "focal" and focal.label_smoothing == 0.1 and focal.kwargs == {"gamma": 3.0, "alpha": 0.25}
    assert from_dict(saved("focal", 2.0, None)).training.loss.kwargs == {"gamma": 2.0}  # null: the default
    # every loss config carried them, only focal read them: dropped elsewhere (the same loss as before)
    assert from_dict(saved("cross_entropy", 2.0, None)).training.loss.kwargs == {}
    assert to_dict(from_dict(saved("cross_entropy", 2.0, None))) == to_dict(
        build_config(None, ["training.loss.label_smoothing=0.1"])
    )
    with pytest.raises(ConfigError, match="'training.loss.focal_gamma' was renamed: set 'training.loss.kwargs.gamma'"):
        build_config(None, ["training.loss.focal_gamma=2"])


@pytest.mark.parametrize("model", ["simple_cnn", "airbench"])
def test_an_option_the_model_does_not_take_is_one_line_before_any_work(model, tmp_path, capsys):
    """``model.drop_path_rate`` on a model without stochastic depth: exit 2, one line naming the key, no run folder."""
    status = main(["train", "quickstart", f"model.name={model}", "model.drop_path_rate=0.1", f"run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and "model.drop_path_rate" in err and "it takes:" in err
    assert not any(tmp_path.iterdir())


def test_every_key_has_a_type_a_default_and_a_line_of_help():
    from imgcls.config import all_keys, describe_keys

    keys = describe_keys()
    assert [k.key for k in keys] == all_keys()
    missing = [k.key for k in keys if len(k.help) < 8]
    assert not missing, f"keys without a help comment in config.py: {missing}"
    lr = next(k for k in keys if k.key == "training.optimizer.lr")
    assert lr.type == "float" and lr.default == 0.05 and lr.valid == "> 0" and "learning rate" in lr.help


def test_config_keys_and_presets_commands(capsys):
    from imgcls.cli import main
    from imgcls.config import list_presets

    assert main(["config", "keys", "training.optimizer.*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["key", "type", "default", "help"]
    assert all(line.startswith("training.optimizer.") for line in out[1:]) and len(out) > 5
    lr_line = next(line for line in out if line.startswith("training.optimizer.lr "))
    assert "float > 0" in lr_line and "0.05" in lr_line and "peak learning rate" in lr_line
    assert main(["config", "keys", "no.such.*"]) == 2
    assert main(["config", "presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    assert all(len(line.split(maxsplit=1)) == 2 and len(line.split(maxsplit=1)[1]) > 20 for line in lines)


@pytest.mark.parametrize("typo", ["model.nam", "training.optimizer.lrr", "run.sed", "data.nme", "trainin.epochs"])
def test_key_suggestions_are_real_keys_without_repeats(typo):
    from imgcls.config import all_keys

    with pytest.raises(ConfigError) as e:
        build_config(None, [f"{typo}=1"])
    msg = str(e.value)
    suggested = re.findall(r"'([\w.]+)'", msg.split("Did you mean")[1].split("?")[0])
    assert suggested and len(suggested) == len(set(suggested))
    assert all(s in all_keys() for s in suggested)

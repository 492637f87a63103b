"""Experiment configuration: defaults, YAML files, --set overrides and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from glae.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    identity_changes,
    load_config,
    run_record_from_dict,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_follow_the_paper() -> None:
    config = load_config(None)
    assert config == TrainConfig()
    config.validate()
    assert config.model.head == "glae" and config.training_loss == "sum"
    assert config.model.max_age == 100 and config.model.input_size == 224
    first, second = config.stages
    assert (first.head, first.sampling, first.freeze, first.val_mode) == ("vanilla", "instance", [], "vanilla")
    # Stage 2: frozen backbone, class-balanced, the balanced head starts from the vanilla one.
    assert (second.head, second.sampling, second.freeze) == ("balanced", "class", ["backbone"])
    assert (second.head_init, second.copy_from, second.val_mode) == ("copy", "vanilla", "routing")
    assert config.sigma == 1.0


def test_yaml_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "model:\n  backbone: resnet50\n  max_age: 116\n"
        "stage1:\n  epochs: 4\n  lr: 0.05\n"
        "data:\n  path: /nowhere\n  limit: 10\n"
    )
    config = load_config(
        path,
        [
            "stage1.epochs=7",  # int, overrides the file
            "stage2.lr=1e-3",  # float in exponent form
            "amp=true",  # bool
            "data.limit=null",  # null
            "model.head_options.embed_dim=64",  # the head's own setting, int | None
            "sigma=2",  # an int is accepted for a float field
            "model.pretrained=/tmp/weights.pth",  # bool | str takes a string
            "clip_grad_norm=null",
        ],
    )
    assert config.model.backbone == "resnet50" and config.model.max_age == 116
    assert config.stages[0].epochs == 7 and config.stages[0].lr == 0.05
    assert config.stages[1].lr == pytest.approx(1e-3)
    assert config.amp is True
    assert config.data.limit is None and config.data.path == "/nowhere"
    assert config.model.head_options["embed_dim"] == 64
    assert config.sigma == 2.0 and isinstance(config.sigma, float)
    assert config.model.pretrained == "/tmp/weights.pth"
    assert config.clip_grad_norm is None


def test_partial_section_keeps_the_rest_of_its_defaults(tmp_path: Path) -> None:
    # Changing one stage-2 setting must not turn stage 2 into an instance-balanced 1-epoch stage.
    config = load_config(None, ["stage2.lr=0.1", "stage1.batch_size=8"])
    assert config.stages[1].lr == 0.1
    assert config.stages[1].sampling == "class" and config.stages[1].epochs == 2
    assert config.stages[0].batch_size == 8 and config.stages[0].epochs == 10
    path = tmp_path / "partial.yaml"
    path.write_text("stage2:\n  epochs: 5\n  lr: 5e-4\n")  # PyYAML reads 5e-4 as a string
    config = load_config(path)
    assert config.stages[1].epochs == 5 and config.stages[1].sampling == "class"
    assert config.stages[1].lr == pytest.approx(5e-4)


def test_dump_and_reload_round_trip(tmp_path: Path) -> None:
    config = load_config(None, ["stage1.epochs=3", "model.head=gap", "loss=kl"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert yaml.safe_load(dump_config(config)) == config_to_dict(config)


def test_unknown_key_names_it_with_its_section() -> None:
    with pytest.raises(ValueError, match=r"stages\.0\.epoch\b"):
        load_config(None, ["stage1.epoch=3"])
    with pytest.raises(ValueError, match=r"model\.depth"):
        load_config(None, ["model.depth=1"])
    with pytest.raises(ValueError, match=r"unknown setting\(s\) learning_rate"):
        load_config(None, ["learning_rate=0.1"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("stage1.epochs=2.5", r"stages\.0\.epochs.*integer"),
        ("stage1.epochs=true", r"stages\.0\.epochs.*integer"),
        ("amp=yes please", r"amp.*true/false"),
        ("sigma=wide", r"sigma.*number"),
        ("sigma=.nan", r"sigma: expected a finite number, got nan"),
        ("stage1.lr=.inf", r"stages\.0\.lr: expected a finite number, got inf"),
        ("stage1.weight_decay=1e400", r"stages\.0\.weight_decay: expected a finite number"),
        ("model.backbone=18", r"model\.backbone.*string"),
        ("stage2.sampling=random", r"stages\.1\.sampling.*not one of"),
        ("loss=mse", r"loss.*not one of"),
        ("data.limit=ten", r"data\.limit"),
        ("model=resnet18", r"model.*mapping"),
    ],
)
def test_wrong_types_are_rejected(override: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_config(None, [override])


def test_a_path_holding_a_hash_is_kept_whole() -> None:
    """YAML would read `` #1/...`` as a comment and train from ``runs/a``; on a command line it is part of the path."""
    config = load_config(None, ["stage2.init_from=runs/a #1/stage1.safetensors", "data.cache_dir='b #2'", "seed=4"])
    assert config.stages[1].init_from == "runs/a #1/stage1.safetensors"
    assert config.data.cache_dir == "b #2" and config.seed == 4


def test_override_syntax_errors() -> None:
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["stage1.epochs"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"seed": 3}, ["seed.value=1"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=base"], "loss 'base' is not one of ('sum',), the losses model.head=glae trains with"),
        (["loss=kl"], "loss 'kl' is not one of ('sum',), the losses model.head=glae trains with"),
        (["model.head=gap", "loss=sum"], "loss 'sum' is not one of ('base', 'kl'), the losses model.head=gap trains with"),
        (["model.head=fr", "loss=sum"], "loss 'sum' is not one of ('base', 'kl'), the losses model.head=fr trains with"),
        (["model.head=ordinal", "loss=base"], "loss 'base' is not one of ('corn',), the losses model.head=ordinal trains with"),
    ],
)
def test_loss_head_mismatch_raises(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError) as error:
        load_config(None, overrides)
    assert str(error.value) == message


@pytest.mark.parametrize("overrides", [["model.head=gap", "loss=base"], ["model.head=fr", "loss=kl"]])
def test_ablation_combinations_are_accepted(overrides: list[str]) -> None:
    load_config(None, overrides)


def test_other_invalid_values() -> None:
    with pytest.raises(ValueError, match="epochs"):
        load_config(None, ["stage2.epochs=-1"])
    with pytest.raises(ValueError, match="max_age"):
        load_config(None, ["model.max_age=0"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == TrainConfig()


def test_config_folder_is_not_empty() -> None:
    assert CONFIGS, "no configs/*.yaml found"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    config.validate()
    assert load_config(path, ["seed=1"]).seed == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint_every=0", "checkpoint_every must be >= 1"),
        ("stage1.batch_size=0", "stages.0.batch_size must be >= 1"),
        ("stage2.max_steps_per_epoch=0", "max_steps_per_epoch must be >= 1"),
        ("stage1.freeze_backbone_layers=-1", "stages.0.freeze_backbone_layers must be >= 0"),
        ("sigma=0", "sigma must be > 0"),
        ("stage1.epochs=0", r"needs stages\.1\.init_from"),
        ("stage1.lr=[1", "not a YAML value"),
        ("model.input_size=0", r"model\.input_size must be an integer in 32\.\.1024, got 0"),
        ("model.input_size=-5", r"model\.input_size .* got -5"),
        ("model.stride=0", r"model\.head_options\.stride must be .* got 0"),
        ("model.head_options.kernel_size=0", r"model\.head_options\.kernel_size must be .* got 0"),
        ("model.head=mlp", r"unknown head 'mlp'; choose one of \['fr', 'gap', 'glae', 'ordinal'\]"),
        ("model.normalization=cifar", r"model\.normalization 'cifar' is not one of backbone, paper"),
        ("stages.2.epochs=1", r"2 is not an index of a list of 2 entries"),
        ("stage2.freeze=[vanilla, balanced]", r"stages\.1\.freeze lists 'balanced', the head this stage trains"),
        ("stage2.head_init=copy", None),
        ("stage2.copy_from=balanced", r"stages\.1\.copy_from must be another head"),
        ("stage2.head_init=keep", None),
        ("stage2.head=vanilla", r"stages\.1\.copy_from must be another head than .vanilla."),
        ("stage2.val_mode=balanced", None),
        ("stage1.val_mode=routing", r"stages\.0\.val_mode routing needs a balanced head"),
        ("model.max_age=1000000", r"model\.max_age must be an integer in 1\.\.200"),
        ("stage1.batch_size=100000000", r"stages\.0\.batch_size must be >= 1 and <= 4096"),
        ("eval_batch_size=100000000", r"eval_batch_size must be >= 1 and <= 4096"),
        ("device=banana", r"device 'banana' is not a device; use auto, cpu, cuda"),
        ("stage1.lr=0", r"stages\.0\.lr must be > 0, got 0"),
        ("stage2.lr=-0.01", r"stages\.1\.lr must be > 0, got -0\.01"),
        ("stage1.weight_decay=-0.0005", r"stages\.0\.weight_decay must be >= 0, got -0\.0005"),
        ("stage1.weight_decay=0", None),
        ("clip_grad_norm=0", r"clip_grad_norm must be > 0 or null \(no clipping\), got 0"),
        ("clip_grad_norm=-5", r"clip_grad_norm must be > 0 or null \(no clipping\), got -5"),
        ("clip_grad_norm=null", None),
        ("stage1.momentum=1", r"stages\.0\.base_momentum and stages\.0\.momentum must satisfy 0 <= base_momentum <= momentum < 1"),
        ("stage2.base_momentum=0.96", r"stages\.1\.base_momentum and stages\.1\.momentum must satisfy .* got 0\.96 and 0\.95"),
        ("stage1.base_momentum=-0.1", r"stages\.0\.base_momentum and stages\.0\.momentum must satisfy"),
        ("stage1.momentum=0", r"stages\.0\.base_momentum .* and momentum > 0"),
        ("stage1.momentum=0.9", None),  # what run folders recorded before base_momentum existed
    ],
)
def test_settings_that_cannot_work_are_refused_up_front(override: str, message: str | None) -> None:
    if message is None:  # a control: the same key with a value that works
        load_config(None, [override])
        return
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_malformed_yaml_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stage1: [epochs: 3\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(path)


def test_cuda_without_a_gpu_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="device cuda: no CUDA GPU is visible on this machine; use cpu or auto"):
        load_config(None, ["device=cuda"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device cuda:3: this machine has 1 CUDA GPU\(s\)"):
        load_config(None, ["device=cuda:3"])


def test_older_stage_sections_and_flat_head_settings_still_load() -> None:
    """A run folder's config.yaml from before ``stages`` and ``head_options`` resumes unchanged."""
    old = {
        "model": {"backbone": "resnet18", "pretrained": False, "head": "glae", "max_age": 116, "input_size": 128,
                  "upscale": 16, "kernel_size": 16, "stride": 16, "proj_depth": 1, "embed_dim": None, "hidden_dim": 64},
        "stage1": {"epochs": 12, "lr": 0.005, "sampling": "instance", "head_init": "copy", "init_from": None},
        "stage2": {"epochs": 3, "lr": 0.0025, "sampling": "class", "head_init": "fresh", "init_from": None},
        "loss": "sum",
    }
    config = config_from_dict(old)
    assert config.model.head_options == {"upscale": 16, "kernel_size": 16, "stride": 16, "proj_depth": 1, "embed_dim": None, "hidden_dim": 64}
    assert config.model.normalization == "paper"  # what every run before the setting was trained with
    first, second = config.stages
    assert (first.head, first.epochs, first.lr, first.head_init, first.freeze) == ("vanilla", 12, 0.005, "keep", [])
    assert (second.head, second.epochs, second.head_init, second.freeze, second.val_mode) == ("balanced", 3, "fresh", ["backbone"], "routing")
    assert config_from_dict(yaml.safe_load(dump_config(config))) == config


def test_momentum_defaults_are_pytorchs_one_cycle() -> None:
    """``momentum`` peaks at the lowest learning rate, ``base_momentum`` at the highest: 0.95 and 0.85,
    the cycle every run trained with before the keys said so."""
    for stage in TrainConfig().stages:
        assert (stage.momentum, stage.base_momentum) == (0.95, 0.85)


def test_run_records_from_before_base_momentum_read_as_they_trained() -> None:
    """A run folder's config.yaml recorded ``momentum: 0.9`` while OneCycle cycled 0.95 -> 0.85:
    it reads as that cycle, so the run resumes; newer records keep their values."""
    old = config_to_dict(TrainConfig())
    for stage in old["stages"]:
        stage.pop("base_momentum")
        stage["momentum"] = 0.9
    assert config_from_dict(old).stages[0].momentum == 0.9  # still a valid config as it stands
    assert [(s.momentum, s.base_momentum) for s in run_record_from_dict(old).stages] == [(0.95, 0.85)] * 2
    sections = {"stage1": {"epochs": 3, "momentum": 0.9}, "stage2": {"epochs": 1, "momentum": 0.9}}
    assert [(s.momentum, s.base_momentum) for s in run_record_from_dict(sections).stages] == [(0.95, 0.85)] * 2
    new = load_config(None, ["stage1.momentum=0.9", "stage1.base_momentum=0.8"])
    assert run_record_from_dict(config_to_dict(new)) == new


def test_a_stage_list_in_yaml_and_its_short_overrides(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "stages:\n"
        "  - {head: vanilla, epochs: 2}\n"
        "  - {head: balanced, epochs: 1, freeze: [backbone], head_init: fresh, sampling: class, val_mode: routing}\n"
        "  - {head: vanilla, epochs: 1, lr: 0.001}\n"
    )
    config = load_config(path, ["stage3.lr=0.002", "stages.1.epochs=4"])
    assert [(s.head, s.epochs) for s in config.stages] == [("vanilla", 2), ("balanced", 4), ("vanilla", 1)]
    assert config.stages[2].lr == 0.002 and config.stages[2].sampling == "instance"
    with pytest.raises(ValueError, match="either a stages list or stage1"):
        config_from_dict({"stages": [{}], "stage1": {"epochs": 1}})


@pytest.mark.parametrize(("head", "loss"), [("glae", "sum"), ("fr", "base"), ("gap", "base"), ("ordinal", "corn")])
def test_each_head_brings_its_default_loss(head: str, loss: str) -> None:
    assert load_config(None, [f"model.head={head}"]).training_loss == loss


def test_two_runs_are_the_same_experiment_whatever_the_spelling_of_their_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resume compares experiments: a file named two ways is one file, and the speed-only settings may change."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    recorded = load_config(None, ["data.path=data", "stages.0.distill_from=teach.safetensors", "stages.1.init_from=./stage1.safetensors",
                                  "model.pretrained=w.pth", "data.protocol=lists", "data.train_list=lists/train.txt",
                                  "data.val_list=lists/val.txt", "data.test_list=lists/test.txt"])
    respelled = load_config(None, [f"data.path={tmp_path}/data/", f"stages.0.distill_from={tmp_path}/teach.safetensors",
                                   "stages.1.init_from=stage1.safetensors", "model.pretrained=./w.pth", "data.protocol=lists",
                                   "data.train_list=./lists/train.txt", "data.val_list=lists//val.txt", "data.test_list=lists/test.txt",
                                   "checkpoint_every=7", "eval_batch_size=16", "data.num_workers=0"])
    assert identity_changes(recorded, respelled) == []
    other = load_config(None, ["data.path=data", "stages.0.distill_from=teach.safetensors", "stages.1.init_from=./stage1.safetensors",
                               "model.pretrained=w.pth", "data.protocol=lists", "data.train_list=lists/train.txt",
                               "data.val_list=lists/val.txt", "data.test_list=lists/other.txt", "seed=3"])
    assert identity_changes(recorded, other) == [
        f"data.test_list: '{tmp_path}/lists/test.txt' recorded, '{tmp_path}/lists/other.txt' now",
        "seed: 0 recorded, 3 now",
    ]
    assert identity_changes(load_config(None, ["model.pretrained=true"]), load_config(None, ["model.pretrained=false"])) == [
        "model.pretrained: True recorded, False now"]

"""Stage configs: defaults < profile < explicit parameters, and clear errors for typos."""

import pytest

from icecore_lib.config import (
    CNNConfig,
    DiscoveryConfig,
    MetadataConfig,
    StageConfig,
    check_overrides,
    profile_defaults,
    stage_config,
    synth_config,
    to_dict,
)


def test_profile_overrides_inherit_along_the_class_hierarchy():
    cfg = stage_config(CNNConfig, "ci")
    assert cfg.image_size == profile_defaults(StageConfig, "ci")["image_size"]
    assert cfg.epochs == profile_defaults(CNNConfig, "ci")["epochs"]
    assert cfg.profile == "ci"


def test_explicit_parameters_win_and_none_means_not_given():
    cfg = stage_config(CNNConfig, "demo", epochs=3, lr=None)
    assert cfg.epochs == 3
    assert cfg.lr == stage_config(CNNConfig, "demo").lr


def test_run_wide_overrides_reach_the_stages_that_have_them():
    overrides = {"epochs": 3, "bootstrap": 7, "flat_field": False}
    cnn = stage_config(CNNConfig, "demo", overrides=overrides)
    assert (cnn.epochs, cnn.bootstrap, cnn.flat_field) == (3, 7, False)
    discovery = stage_config(DiscoveryConfig, "demo", overrides=overrides)  # no epochs there: left to the others
    assert discovery.bootstrap == 7 and not hasattr(discovery, "epochs")
    assert stage_config(CNNConfig, "demo", overrides=overrides, epochs=5).epochs == 5  # explicit wins
    check_overrides(overrides)
    with pytest.raises(ValueError, match="epoch'"):
        check_overrides({"epoch": 3})
    with pytest.raises(ValueError, match="dataset"):
        check_overrides({"dataset": "icelearning"})


def test_papermill_lists_become_tuples_and_back():
    cfg = stage_config(CNNConfig, "ci", variants=["image"])
    assert cfg.variants == ("image",)
    assert to_dict(cfg)["variants"] == ["image"]


def test_unknown_parameter_and_profile_are_named():
    with pytest.raises(TypeError, match="epoch"):
        stage_config(MetadataConfig, "ci", epoch=3)
    with pytest.raises(ValueError, match="gpu"):
        stage_config(MetadataConfig, "gpu")


def test_dataset_defaults_to_the_profiles_synthetic_set():
    assert stage_config(StageConfig, "ci").dataset_name == "synthetic-ci"
    assert stage_config(StageConfig, "ci", dataset="icelearning").dataset_name == "icelearning"


def test_synth_profiles_scale_up():
    assert synth_config("ci").n_train_per_class < synth_config("demo").n_train_per_class < synth_config("full").n_train_per_class

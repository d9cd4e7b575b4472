"""`keras_pcl.methods`: every method by name, its options read from its class."""

import pytest

import keras_pcl
from keras_pcl import baselines
from keras_pcl import methods
from tests.testing import tiny_backbone

SEPARATE_NETWORKS = ("vanilla", "dml", "kdcl")


def build(name, **options):
    split_at = None if name in SEPARATE_NETWORKS else "split"
    return methods.build_method(
        name, tiny_backbone(), 3, split_at=split_at, augmentation=None, **options
    )


@pytest.mark.parametrize("name", methods.METHODS)
def test_every_name_builds_its_class(name):
    model = build(name, temperature=2.5, rampup_steps=7)
    want = (
        keras_pcl.PeerCollaborativeModel
        if name.startswith("pcl")
        else baselines.BASELINES[name]
    )
    assert type(model) is want
    if name != "vanilla":  # Vanilla has no temperature and no ramp-up.
        assert model.temperature == 2.5
    if model.uses_rampup:
        assert model.rampup_steps == 7


def test_ablation_names_set_their_switch():
    assert not build("pcl_no_ensemble").distill_from_ensemble
    assert not build("pcl_no_mean_teachers").distill_from_mean_teachers
    assert not build("pcl_shared_augmentation").views_per_peer
    plain = build("pcl")
    assert plain.distill_from_ensemble and plain.distill_from_mean_teachers


def test_options_follow_each_constructor():
    assert "ema_decay" in methods.method_options("pcl")
    assert "ema_decay" not in methods.method_options("dml")
    assert "kd_weight" in methods.method_options("kdcl")
    assert "split_at" not in methods.method_options("dml")  # A fixed argument.
    assert "num_peers" not in methods.method_options("vanilla")
    # The ablation's own switch is not an option of the ablation.
    assert "distill_from_ensemble" not in methods.method_options("pcl_no_ensemble")
    assert "views_per_peer" not in methods.method_options("pcl_shared_augmentation")
    # A class attribute of the baselines, which each fix: not an option.
    assert "views_per_peer" in methods.method_options("pcl")
    assert "views_per_peer" not in methods.method_options("dml")


def test_settings_a_method_lacks_are_left_out_and_none_keeps_defaults():
    dml = build("dml", ema_decay=0.5, consistency_weight=2.0, num_peers=2)
    assert dml.num_peers == 2 and not hasattr(dml, "ema_decay")
    kdcl = build("kdcl", temperature=None)
    assert kdcl.temperature == 4.0  # KDCL's own default.
    pcl = build("pcl", ema_decay=0.5, consistency_weight=2.0)
    assert pcl.ema_decay == 0.5 and pcl.consistency_weight == 2.0


def test_unknown_names_and_options_raise_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown method 'okdip'.*\['okddip'\]"):
        methods.build_method("okdip", tiny_backbone(), 3)
    with pytest.raises(ValueError, match="No method has the option.*bogus=1"):
        build("pcl", bogus=1)

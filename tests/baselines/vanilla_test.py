"""`keras_pcl.baselines.VanillaModel`: the backbone and a classifier."""

from keras_pcl import baselines
from tests.testing import tiny_backbone


def test_vanilla_is_the_backbone_and_a_classifier():
    model = baselines.VanillaModel(tiny_backbone(), 3)
    assert model.num_peers == 1
    network = model.get_peer(0)
    kinds = [type(layer).__name__ for layer in network.layers]
    assert kinds == ["InputLayer", "Rescaling", "Functional", "Dense"]
    config = model.get_config()
    for fixed in ("num_peers", "split_at", "temperature", "rampup_steps"):
        assert fixed not in config

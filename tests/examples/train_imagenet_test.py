"""The ImageNet recipe runs a step on `tfds.testing.mock_data`."""

import tensorflow_datasets as tfds

from keras_pcl import training
from tests.ci_budget import torch_only_in_ci


@torch_only_in_ci
def test_imagenet_recipe_trains_a_step_on_mock_data(tmp_path):
    config = training.imagenet_config(
        backbone="resnet8",  # the recipe's data path, a small network
        num_peers=2,
        epochs=1,
        batch_size=2,
        steps_per_epoch=1,
        workdir=str(tmp_path / "run"),
        export_format="none",
        verbose=0,
    )
    assert (config.epochs, config.lr_decay_epochs, config.weight_decay) == (
        1,
        (30, 60),
        1e-4,
    )
    with tfds.testing.mock_data(num_examples=4):
        result = training.train(config)
    assert result["final_step"] == 1
    model = result["model"]
    assert model._image_shape == (224, 224, 3)

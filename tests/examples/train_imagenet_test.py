"""The ImageNet recipe runs a step on `tfds.testing.mock_data`."""

import pytest
import tensorflow_datasets as tfds

from keras_pcl import training


@pytest.mark.backend_independent
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
    assert (config.epochs, config.weight_decay) == (1, 1e-4)
    # The recipe's schedule as fractions of the run: at its 90 epochs the
    # paper's drops at 30 and 60, here a third and two thirds of 1 epoch.
    full = training.config.run_schedule(training.imagenet_config(), 10)
    assert full.lr_decay_epochs == (30.0, 60.0) and full.rampup_epochs == 20.0
    short = training.config.run_schedule(config, 300)
    assert short.lr_boundaries == (100, 200) and short.warnings == {}
    with tfds.testing.mock_data(num_examples=4):
        result = training.train(config)
    assert result["final_step"] == 1
    model = result["model"]
    assert model._image_shape == (224, 224, 3)

"""`keras_pcl.benchmark`: what a timed `fit` call measures."""

import keras
import numpy as np

from keras_pcl import benchmark


def tiny_model():
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_time_fit_times_the_training_loop_of_exactly_the_steps_asked():
    x, y = benchmark.random_images(40, (4, 4, 3), 2)
    model = tiny_model()
    loop, wall = benchmark.time_fit(model, x, y, 8, 3, return_wall=True)
    assert 0 < loop <= wall  # set-up and tear-down are outside the loop
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3


def test_time_models_reports_loop_and_wall_seconds_per_run():
    x, y = benchmark.random_images(40, (4, 4, 3), 2)
    models = {"vanilla": tiny_model(), "other": tiny_model()}
    results = benchmark.time_models(models, x, y, 8, 2, 2, 1)
    for figures in results.values():
        assert len(figures["run_seconds"]) == len(figures["fit_wall_seconds"]) == 2
        assert all(
            0 < loop <= wall
            for loop, wall in zip(figures["run_seconds"], figures["fit_wall_seconds"])
        )
        np.testing.assert_allclose(
            figures["step_seconds"], np.median(figures["run_seconds"]) / 2
        )
    assert results["vanilla"]["ratio_to_vanilla"] == 1.0
    for name, model in models.items():  # warm-up (1) + 2 runs of 2 steps
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 5, name

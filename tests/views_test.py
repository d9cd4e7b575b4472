"""`keras_pcl.views.PeerViews`: what each peer sees for a batch."""

import warnings

import keras
import numpy as np
import pytest

from keras_pcl.views import PeerViews
from keras_pcl.views import PixelScaleWarning
from keras_pcl.views import check_images
from tests.testing import colour_dataset


def numpy(tensors):
    return [keras.ops.convert_to_numpy(t) for t in tensors]


def test_each_view_is_its_own_draw_then_preprocessed():
    x, _ = colour_dataset(8, seed=0)
    views = PeerViews(3, x.shape[1:], augmentation="default")
    out = numpy(views(x, training=True))
    assert len(out) == 3
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    # Rescaling(1/255) by default: pixels in [0, 1].
    assert all(v.min() >= 0 and v.max() <= 1 for v in out)


def test_outside_training_every_view_is_the_same_preprocessed_batch():
    x, _ = colour_dataset(8, seed=0)
    views = PeerViews(2, x.shape[1:], augmentation="default")
    first, second = views(x, training=False)
    assert first is second
    # Independent: the default preprocessing divides by 255 (float32).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first), x.astype("float32") / 255, rtol=1e-6
    )


def test_a_shared_view_is_one_draw_for_all_peers():
    x, _ = colour_dataset(8, seed=0)
    views = PeerViews(3, x.shape[1:], augmentation="default", views_per_peer=False)
    out = views(x, training=True)
    assert out[0] is out[1] is out[2]


def test_views_from_the_pipeline_are_only_preprocessed():
    x, _ = colour_dataset(8, seed=0)
    views = PeerViews(2, x.shape[1:], augmentation="default")
    given = (x, np.flip(x, axis=2).copy())
    out = numpy(views(given, training=True))
    for got, want in zip(out, given):
        np.testing.assert_allclose(got, want.astype("float32") / 255, rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    x, _ = colour_dataset(4, seed=0)
    views = PeerViews(2, x.shape[1:], owner="DMLModel", views_per_peer=False)
    with pytest.raises(ValueError, match="DMLModel gives all peers the same view"):
        views((x, x))
    views = PeerViews(2, x.shape[1:])
    with pytest.raises(ValueError, match="holds 3 views.*num_peers=2"):
        views((x, x, x))
    with pytest.raises(ValueError, match=r"Received: x.shape=\(4, 8, 8\)"):
        views(x[..., 0])
    with pytest.raises(ValueError, match="a dict with keys"):
        views({"images": x})
    with pytest.raises(ValueError, match="`preprocessing` must be a Keras layer"):
        PeerViews(2, x.shape[1:], preprocessing=lambda t: t)
    with pytest.raises(ValueError, match="`augmentation` must be 'default'"):
        PeerViews(2, x.shape[1:], augmentation="flip")


# ----------------------------------------------------------------------
# `check_images`: the pixel scale and empty arrays, before any step.
# ----------------------------------------------------------------------


def pixel_warnings(images, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_images(images, **kwargs)
    return [w for w in caught if issubclass(w.category, PixelScaleWarning)]


def test_float_images_in_zero_one_warn_with_the_fix():
    x, _ = colour_dataset(4, seed=0)
    (warning,) = pixel_warnings(x.astype("float32") / 255, name="x")
    message = str(warning.message)
    assert "`x` holds float images with values in [0" in message
    assert "expects raw pixels in [0, 255]" in message and "x * 255" in message
    # Backend tensors and per-peer views are checked too.
    assert len(pixel_warnings(keras.ops.convert_to_tensor(x / 255))) == 1
    assert len(pixel_warnings((x / 255, x / 255))) == 2


def test_raw_pixels_do_not_warn():
    x, _ = colour_dataset(4, seed=0)
    assert not pixel_warnings(x)  # uint8
    assert not pixel_warnings(x.astype("float32"))  # floats in [0, 255]
    assert not pixel_warnings(np.zeros((2, 4, 4, 3), "uint8"))  # integers: raw
    assert not pixel_warnings(None) and not pixel_warnings({"images": x / 255})


def test_an_empty_array_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`x` has no examples.*shape \(0, 8, 8, 3\)"):
        check_images(np.zeros((0, 8, 8, 3), "uint8"), name="x")

"""`PeerViews`: the network inputs that each peer sees for a batch.

PCL gives each peer its own random augmentation of the batch (spec section
1); some baselines give all peers one shared view. This layer is the first
thing a training step runs: raw pixels in, `num_views` preprocessed views
out. Outside training every view is the same preprocessed batch.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_pcl.augmentation import default_augmentation


class PixelScaleWarning(UserWarning):
    """Float images in [0, 1] where raw pixels in [0, 255] are expected.

    Silence it where `preprocessing` does expect [0, 1] inputs:
    `warnings.filterwarnings("ignore", category=PixelScaleWarning)`.
    """


def check_images(images, name="x", owner="The model", stacklevel=2):
    """Checks in-memory images before `fit`, `evaluate` or `predict` runs.

    The models of keras-pcl take raw pixels in [0, 255] (uint8, or floats
    of that range): their `preprocessing` (by default `Rescaling(1 / 255)`,
    or a keras.applications backbone's own layer) scales them inside the
    network, in training and in every deployed or exported peer. Images
    already scaled to [0, 1] (a common habit) would be scaled twice: a
    model then trains near chance, and one trained on raw pixels predicts
    one class for everything. Nothing inside the compiled step can say so,
    so the arrays are checked on the host first, in one NumPy pass: float
    images whose maximum is <= 1 get a `PixelScaleWarning` with the fix (a
    warning, not an error: a custom `preprocessing` may expect [0, 1]).

    A `tf.data.Dataset`, a `PyDataset` or a generator is not read ahead
    here (`keras_pcl.training` checks the first batch of the datasets it
    builds).

    Args:
        images: NumPy array, backend tensor, list, or a tuple/list of
            `num_peers` such arrays (views augmented by the pipeline);
            anything else (datasets, dicts, None) is returned unchecked.
        name: the argument's name, for the messages.
        owner: the model's class name, for the messages.
        stacklevel: the warning's `stacklevel`, counted from the caller of
            `check_images` (2: that caller's caller).

    Raises:
        ValueError: an array with no examples (its first dimension is 0).

    Example:

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     check_images(np.full((2, 4, 4, 3), 0.5, "float32"))
    >>> caught[0].category.__name__
    'PixelScaleWarning'
    """
    if isinstance(images, (tuple, list)) and images and not _is_number(images[0]):
        if all(_is_array(v) for v in images):
            for i, view in enumerate(images):
                check_images(view, f"{name}[{i}]", owner, stacklevel + 1)
            return
    array = _as_numpy(images)
    if array is None or array.ndim == 0:
        return
    if array.shape[0] == 0:
        raise ValueError(
            f"`{name}` has no examples: its first dimension is 0 (shape "
            f"{array.shape}). Pass at least one image. Received: "
            f"{name}.shape={array.shape}"
        )
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return  # uint8 and other integer pixels are raw by construction.
    high = float(np.max(array))
    if not high <= 1.0:  # Also False for NaN.
        return
    low = float(np.min(array))
    warnings.warn(
        f"`{name}` holds float images with values in [{low:.3g}, {high:.3g}]: "
        f"they look scaled to [0, 1], but {owner} expects raw pixels in "
        "[0, 255] (uint8, or floats of that range) and scales them itself "
        "with its `preprocessing`; scaled twice, a model trains near chance "
        "and one trained on raw pixels predicts one class for everything. "
        f"Pass the raw pixels (e.g. `{name} * 255`). If your `preprocessing` "
        "does expect [0, 1] inputs, silence this warning with "
        "`warnings.filterwarnings('ignore', "
        "category=keras_pcl.views.PixelScaleWarning)`.",
        PixelScaleWarning,
        stacklevel=stacklevel + 1,
    )


def _is_number(value):
    return isinstance(value, (int, float, np.number))


def _is_array(value):
    return isinstance(value, (np.ndarray, list)) or keras.ops.is_tensor(value)


def _as_numpy(value):
    """`value` as a NumPy array, or None for what is not an array."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list):
        try:
            return np.asarray(value)
        except ValueError:  # Ragged.
            return None
    if keras.ops.is_tensor(value):
        return keras.ops.convert_to_numpy(value)
    return None


class PeerViews(keras.layers.Layer):
    """Augments and preprocesses a batch of raw images once per peer.

    Not serialised on its own: a model rebuilds it from its own
    `augmentation` and `preprocessing` arguments.

    Args:
        num_views: int, the number of peers.
        image_shape: the shape of one raw image, as the backbone takes it.
        augmentation: the training augmentation of raw pixels: `"default"`
            (pad `size // 8` pixels, random crop, random horizontal flip),
            a Keras layer or callable, or None.
        preprocessing: a Keras layer from raw pixels to network inputs;
            None means `keras.layers.Rescaling(1 / 255)`.
        views_per_peer: draw one augmentation per peer (True) or one for all
            (False).
        owner: the name of the model class, for error messages.

    Example:

    ```python
    views = PeerViews(3, (32, 32, 3), augmentation="default")
    first, second, third = views(uint8_images, training=True)
    ```
    """

    def __init__(
        self,
        num_views,
        image_shape,
        augmentation="default",
        preprocessing=None,
        views_per_peer=True,
        owner="The model",
        **kwargs,
    ):
        if preprocessing is not None and not isinstance(
            preprocessing, keras.layers.Layer
        ):
            raise ValueError(
                "`preprocessing` must be a Keras layer (it becomes part of "
                "every deployed network), e.g. "
                "`keras.layers.Normalization(mean=..., variance=...)`. "
                f"Received: preprocessing={preprocessing!r}"
            )
        if not (
            augmentation is None or augmentation == "default" or callable(augmentation)
        ):
            raise ValueError(
                "`augmentation` must be 'default', None, a Keras layer or a "
                f"callable. Received: augmentation={augmentation!r}"
            )
        # float32: raw pixels and host-augmented views are never autocast
        # to a mixed-precision compute dtype here (`preprocessing` keeps its
        # own policy).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_views = num_views
        self.image_shape = tuple(image_shape)
        self.views_per_peer = views_per_peer
        self.owner = owner
        if preprocessing is None:
            preprocessing = keras.layers.Rescaling(1.0 / 255, name="rescaling")
        if not preprocessing.built:
            # Built here, not inside the first traced step: a layer such as
            # `Normalization(mean=..., variance=...)` creates tensors in
            # `build` that a later trace could not reach.
            preprocessing.build((None,) + self.image_shape)
        self.preprocessing = preprocessing
        if augmentation == "default":
            channels_first = keras.config.image_data_format() == "channels_first"
            shape = self.image_shape
            augmentation = default_augmentation(
                shape[1:] if channels_first else shape[:2]
            )
        self.augmentation = augmentation
        if isinstance(augmentation, keras.layers.Layer):
            augmentation.build((None,) + self.image_shape)
        self.built = True

    def call(self, inputs, training=False):
        """Returns a list of `num_views` network inputs.

        Args:
            inputs: a batch of raw images `(batch, *image_shape)`, or a
                tuple of `num_views` such batches (views augmented by the
                input pipeline, which are only preprocessed).
            training: whether to augment; outside training every view is the
                same preprocessed batch (the same tensor, computed once).
        """
        if isinstance(inputs, dict):
            raise ValueError(
                "`x` must be a batch of images or a tuple of `num_peers` "
                f"batches (one view per peer). Received: a dict with keys "
                f"{sorted(inputs)}"
            )
        if isinstance(inputs, (list, tuple)):
            if not self.views_per_peer:
                raise ValueError(
                    f"{self.owner} gives all peers the same view; pass one "
                    f"batch of images, not a tuple of {len(inputs)} views."
                )
            if len(inputs) != self.num_views:
                raise ValueError(
                    f"`x` holds {len(inputs)} views, but the model has "
                    f"num_peers={self.num_views}. Pass one batch of images "
                    "(augmented in the model) or exactly one view per peer."
                )
            return [self.preprocessing(self._check_images(v)) for v in inputs]
        images = self._check_images(inputs)
        if not training or self.augmentation is None:
            return [self.preprocessing(images)] * self.num_views
        if not self.views_per_peer:
            return [self.preprocessing(self._augment(images))] * self.num_views
        return [
            self.preprocessing(self._augment(images)) for _ in range(self.num_views)
        ]

    def compute_output_spec(self, inputs, training=False):
        if isinstance(inputs, (list, tuple)):
            inputs = inputs[0]
        spec = self.preprocessing.compute_output_spec(inputs)
        return [spec] * self.num_views

    def _augment(self, images):
        if isinstance(self.augmentation, keras.layers.Layer):
            return self.augmentation(images, training=True)
        return self.augmentation(images)

    def _check_images(self, images):
        images = ops.convert_to_tensor(images)
        shape = tuple(images.shape)
        expected = self.image_shape
        if len(shape) != len(expected) + 1 or any(
            e is not None and s is not None and e != s
            for s, e in zip(shape[1:], expected)
        ):
            raise ValueError(
                f"Images must have shape (batch, {', '.join(map(str, expected))}) "
                f"to match the backbone's input. Received: x.shape={shape}"
            )
        if not keras.backend.is_float_dtype(images.dtype):
            images = ops.cast(images, "float32")
        return images

"""`PeerViews`: the network inputs that each peer sees for a batch.

PCL gives each peer its own random augmentation of the batch (spec section
1); some baselines give all peers one shared view. This layer is the first
thing a training step runs: raw pixels in, `num_views` preprocessed views
out. Outside training every view is the same preprocessed batch.
"""

import keras
from keras import ops

from keras_pcl.augmentation import default_augmentation


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
        view_per_peer: draw one augmentation per peer (True) or one for all
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
        view_per_peer=True,
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
        self.view_per_peer = view_per_peer
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
            if not self.view_per_peer:
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
        if not self.view_per_peer:
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

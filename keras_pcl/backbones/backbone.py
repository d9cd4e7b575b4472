"""`Backbone`: the base class of the built-in backbones.

Like KerasHub's `Backbone`, it is a functional `keras.Model` that owns what
every backbone repeats: the constructor arguments it must give back in
`get_config`, `from_config`, the dtype policy and `default_split_at`. A
subclass checks its own arguments, builds its graph from images to features
(every layer with the backbone's dtype policy) and passes the result here.
"""

import keras


class Backbone(keras.Model):
    """A functional model from images to features that owns its config.

    A subclass's `__init__` takes its own arguments, then `input_shape`,
    `kernel_regularizer`, `data_format`, `name`, `dtype` and `**kwargs`. It
    checks the shared ones with `keras_pcl.backbones.common.image_input`,
    builds its graph from that input to the features, and passes both here.
    Every argument comes back from `get_config`, so
    `from_config(get_config())` and a `.keras` save and load rebuild the same
    network with the same dtype policy. The arguments of `arguments` are also
    attributes of the model (`backbone.depth`); `input_shape` is
    `backbone.image_shape`.

    Args:
        image_input: the `keras_pcl.backbones.common.ImageInput` the graph
            was built from (its `images` input, checked `input_shape`,
            `data_format`, kernel `regularizer` and `dtype` policy).
        outputs: the feature tensor, `(batch, features)`.
        arguments: dict of the subclass's own constructor arguments (e.g.
            `{"depth": 32}`), as accepted: they must be JSON-serialisable.
        default_split_at: name of the layer where `PeerCollaborativeModel`
            splits by default.
        name: the model's name.
        **kwargs: passed to `keras.Model` (`trainable`).

    Example:

    >>> from keras_pcl.backbones import CIFARResNet
    >>> backbone = CIFARResNet(depth=8, input_shape=(8, 8, 3), dtype="float64")
    >>> clone = CIFARResNet.from_config(backbone.get_config())
    >>> clone.depth, clone.dtype_policy.name, clone.default_split_at
    (8, 'float64', 'stage2_block1_out')

    A subclass, in outline:

    ```python
    class Pooling(Backbone):
        def __init__(self, size=2, input_shape=(8, 8, 3), kernel_regularizer=None,
                     data_format=None, name="pooling", dtype=None, **kwargs):
            size = check_int("size", size, minimum=1)
            spec = image_input(input_shape, kernel_regularizer, data_format,
                               dtype, min_size=size)
            x = keras.layers.AveragePooling2D(
                size, data_format=spec.data_format, name="pool", dtype=spec.dtype
            )(spec.images)
            super().__init__(
                spec, spec.global_pool(x), arguments={"size": size},
                default_split_at="pool", name=name, **kwargs,
            )
    ```
    """

    def __init__(
        self,
        image_input,
        outputs,
        *,
        arguments,
        default_split_at,
        name,
        **kwargs,
    ):
        super().__init__(
            inputs=image_input.images, outputs=outputs, name=name, **kwargs
        )
        # A functional model ignores `dtype`: its layers have theirs already.
        # Record the policy they were built with, as KerasHub does.
        self.dtype_policy = image_input.dtype
        for key, value in arguments.items():
            setattr(self, key, value)
        self._argument_names = tuple(arguments)
        self.image_shape = tuple(image_input.input_shape)
        self.kernel_regularizer = image_input.regularizer
        self.data_format = image_input.data_format
        self.default_split_at = default_split_at

    def get_config(self):
        """The constructor's arguments: the subclass's own, `input_shape`,
        `kernel_regularizer` (serialised), `data_format`, `name`, `trainable`
        and `dtype` (the serialised dtype policy)."""
        # Not `super().get_config()`: a functional model's config is its
        # graph of layers, which the subclass's constructor cannot take.
        config = {key: getattr(self, key) for key in self._argument_names}
        config.update(
            {
                "input_shape": self.image_shape,
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "data_format": self.data_format,
                "name": self.name,
                "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """`cls(**config)`: the same class, where `keras.Model.from_config`
        would rebuild a plain functional model."""
        return cls(**config)

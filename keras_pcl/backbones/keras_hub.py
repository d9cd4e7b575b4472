"""KerasHub image backbones as PCL backbones: `from_keras_hub`.

What KerasHub's image backbones are (keras-hub 0.32, read from its source
and checked by `tests/backbones/keras_hub_test.py`):

* A `keras_hub.models.Backbone` is a functional `keras.Model` (a subclass,
  with its own `get_config`/`from_config` and `from_preset`). The CNN
  families (ResNet, DenseNet, EfficientNet, VGG checked) build one flat
  graph of named standard Keras layers, so every block end is a top-level
  layer that `keras_pcl.splitting` can cut at (`stack2_block1_out` for a
  ResNet), and the deployed network needs no KerasHub class.
* They end in a feature map, `(batch, height, width, channels)`, not a
  pooled vector: KerasHub's `ImageClassifier` task adds the pooling (`"avg"`
  or `"max"`) and the classifier. `FeaturePyramidBackbone`s (ResNet,
  DenseNet, EfficientNet, CSPNet, ...) also record the output of each stage
  in `pyramid_outputs` (`{"P2": ..., "P5": ...}`), which is where
  `from_keras_hub` finds the start of the last stage.
* ViT is one patch-embedding layer and one `ViTEncoder` layer holding every
  transformer block (no split inside), ends in tokens
  `(batch, tokens, dim)`, and its embedding layer does not come back from
  its own config, which PCL needs to copy layers: refused.
* The default input shape is `(None, None, 3)`; PCL's augmentation and
  deployed networks need a fixed one, passed as `image_shape`.
* A backbone expects images already converted by its preset's
  `ImageConverter` (`keras_hub.layers.ImageConverter`): raw pixels times
  `scale` plus `offset`, per channel, after resizing to `image_size`. The
  backbone itself does no rescaling. `preprocessing_from_keras_hub` turns a
  converter (or a preset's) into the `preprocessing` layer of
  `PeerCollaborativeModel`.

`KerasHubBackbone` is the PCL backbone: images -> the hub backbone's layers
-> global pooling, a flat functional model with a `default_split_at`. Its
config is the hub backbone's own config plus the pooling, so it survives
`.keras` saving inside `PeerCollaborativeModel`; so that what trains is what
reloads, the hub backbone is rebuilt from that config (with its weights)
and checked to compute the same features.

`keras_hub` is optional (`pip install keras-hub`): it is imported when a
function here is first called, not when `keras_pcl` is imported.
"""

import difflib

import keras
import numpy as np

from keras_pcl import _compat
from keras_pcl import splitting
from keras_pcl._compat import keras_history
from keras_pcl.validation import raise_invalid

POOLINGS = ("avg", "max")

# Families whose last stage does not start at their second-to-last pyramid
# output. DenseNet's transition (conv + pool) closes the previous stage, as
# in `keras_pcl.backbones.CIFARDenseNet` ('transition2_pool') and
# keras.applications' DenseNet ('pool4_pool'); VGG has no pyramid, and its
# last block starts after the pooling of the one before ('block4_pool' for
# VGG-16, as spec section 6).
_FAMILY_SPLITS = {
    "DenseNetBackbone": lambda backbone: (
        f"transition{len(backbone.stackwise_num_repeats) - 1}_pool"
    ),
    "VGGBackbone": lambda backbone: (
        f"block{len(backbone.stackwise_num_repeats) - 1}_pool"
    ),
}


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "KerasHub backbones need the `keras-hub` package: "
            "`pip install keras-hub` (keras-pcl is tested with 0.32)."
        ) from error
    return keras_hub


@keras.saving.register_keras_serializable(package="keras_pcl")
class KerasHubBackbone(keras.Model):
    """A KerasHub image backbone, pooled: a PCL backbone.

    Use `from_keras_hub`, which also loads presets. This functional model
    runs the layers of a copy of the hub backbone, rebuilt from the hub
    backbone's config at `image_shape` with its weights (what loading a
    saved model rebuilds), and ends in global pooling, so `split_candidates`,
    `split_at` and `PeerCollaborativeModel` see every layer of the hub
    model. The backbone passed in is left as it is.

    Args:
        backbone: a `keras_hub.models.Backbone` with one image input and a
            feature-map (or token-sequence) output, or its serialised form
            (`keras.saving.serialize_keras_object`).
        pooling: `"avg"` or `"max"`: global pooling of a feature map (or of
            a token sequence). None only for a backbone whose output is
            already `(batch, features)`.
        image_shape: the shape of one input image, e.g. `(32, 32, 3)`.
            Required when the hub backbone's is not fixed (KerasHub's
            default is `(None, None, 3)`).
        kernel_regularizer: None, or a regularizer (e.g.
            `keras.regularizers.L2(5e-4 / 2)`, see docs/backbones.md) set on
            the kernel of every top-level layer of the hub backbone that has
            a `kernel_regularizer` (convolutions, dense layers).
        name: the model's name; defaults to the hub backbone's name.
        **kwargs: passed to `keras.Model` (`trainable`).

    Attributes:
        hub_backbone: the KerasHub backbone (the rebuilt copy) whose layers
            this model runs.
        default_split_at: where `PeerCollaborativeModel` splits by default
            (the start of the last stage), or None when it is not known.
        pooling, image_shape, kernel_regularizer, data_format.
    """

    def __init__(
        self,
        backbone,
        pooling="avg",
        image_shape=None,
        kernel_regularizer=None,
        name=None,
        **kwargs,
    ):
        keras_hub = _import_keras_hub()
        from_config = isinstance(backbone, dict)
        if from_config:
            backbone = keras.saving.deserialize_keras_object(backbone)
        _check_hub_backbone(keras_hub, backbone)
        image_shape = _check_image_shape(backbone, image_shape)
        _check_pooling(pooling, backbone.outputs[0], backbone)
        if not from_config or tuple(backbone.inputs[0].shape[1:]) != image_shape:
            backbone = _rebuilt(backbone, image_shape)
        _check_rebuildable(backbone)
        feature_map = backbone.outputs[0]
        kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        _set_kernel_regularizer(backbone, kernel_regularizer)
        data_format = getattr(backbone, "data_format", None) or (
            keras.config.image_data_format()
        )
        features = feature_map
        if pooling is not None:
            features = _pooling_layer(pooling, feature_map, backbone, data_format)(
                feature_map
            )
        super().__init__(
            inputs=backbone.inputs[0],
            outputs=features,
            name=name or backbone.name,
            **kwargs,
        )
        # Like keras_pcl.backbones.Backbone: a functional model ignores
        # `dtype`; record the policy that its layers were built with.
        self.dtype_policy = backbone.dtype_policy
        # Not tracked: its layers are this model's layers already, and
        # tracking it would save every weight twice.
        object.__setattr__(self, "hub_backbone", backbone)
        self.pooling = pooling
        self.image_shape = image_shape
        self.kernel_regularizer = kernel_regularizer
        self.data_format = data_format
        candidates = splitting.split_candidates(self)
        self.default_split_at = _default_split(backbone, candidates)
        if not candidates:
            raise ValueError(
                "`backbone` cannot be split: no layer of "
                f"{type(backbone).__name__} '{backbone.name}' cuts it in one "
                "tensor, so PCL has no place to branch its peers (its "
                "computation is probably inside one layer or nested model). "
                "Use a backbone with a flat graph of blocks, or split a "
                "nested model yourself: build a functional model on its "
                "tensors (docs/backbones.md, 'Nested models'). "
                f"Received: backbone with layers {[x.name for x in backbone.layers]}"
            )

    def get_config(self):
        """The hub backbone's config (KerasHub's own), `pooling`,
        `image_shape`, `kernel_regularizer`, `name` and `trainable`."""
        # Not `super().get_config()`: a functional model's config is its
        # graph of layers, which this constructor does not take.
        return {
            "backbone": keras.saving.serialize_keras_object(self.hub_backbone),
            "pooling": self.pooling,
            "image_shape": self.image_shape,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        """`cls(**config)`, where `keras.Model.from_config` would rebuild a
        plain functional model."""
        config = dict(config)
        if config.get("image_shape") is not None:
            config["image_shape"] = tuple(config["image_shape"])
        return cls(**config)


def from_keras_hub(
    backbone,
    pooling="avg",
    image_shape=None,
    kernel_regularizer=None,
    name=None,
    **preset_kwargs,
):
    """A KerasHub image backbone as a PCL backbone (images -> pooled features).

    The result is a `KerasHubBackbone`: a flat functional model of the hub
    backbone's own layers plus global pooling, with a `default_split_at`,
    ready for `keras_pcl.PeerCollaborativeModel(backbone, num_classes)`.

    Default split (`default_split_at`), where the last stage begins (spec
    section 6): for a `FeaturePyramidBackbone` (ResNet, EfficientNet, ...)
    the output of its second-to-last pyramid level (a four-stage ResNet:
    'stack2_block{n}_out', the peers own the last stack); for DenseNet the
    last transition ('transition3_pool' for four blocks); for VGG the pooling
    before the last block ('block4_pool' for VGG-16). Other families have
    none: pass `split_at` to `PeerCollaborativeModel`, one of
    `split_candidates(backbone)`.

    Pixel scale: a hub backbone takes what its preset's `ImageConverter`
    outputs (raw `[0, 255]` pixels times `scale` plus `offset` per channel;
    for ImageNet-trained presets usually ImageNet standardisation,
    `scale = 1 / (255 * std)` and `offset = -mean / std`, but read the
    preset's converter rather than assume it). It does no rescaling itself.
    So with pretrained weights pass
    `preprocessing=preprocessing_from_keras_hub(preset)` to
    `PeerCollaborativeModel` and feed raw `[0, 255]` images already at
    `image_shape` (the converter's resizing is left to the input pipeline).
    A backbone built from a config has random weights and no converter:
    PCL's default `preprocessing` (`Rescaling(1 / 255)`) is fine.

    Args:
        backbone: a `keras_hub.models.Backbone` instance (e.g.
            `keras_hub.models.ResNetBackbone(...)` or one loaded with
            `from_preset`), or a preset: a local preset directory (made with
            `save_to_preset`) or a handle (`"resnet_18_imagenet"`,
            `"kaggle://..."`, `"hf://..."`), which is loaded with
            `keras_hub.models.Backbone.from_preset(backbone, **preset_kwargs)`.
        pooling: `"avg"` (default, as KerasHub's `ImageClassifier`) or
            `"max"`: global pooling of the feature map (or of the tokens of
            a transformer). None if the backbone already outputs
            `(batch, features)`.
        image_shape: the input shape, e.g. `(32, 32, 3)`. Required unless the
            hub backbone's is fixed. The hub backbone (or the preset's) is
            rebuilt from its config at this shape, with its weights.
        kernel_regularizer: None or a regularizer for the kernels of the hub
            backbone's top-level layers (convolutions, dense layers); see
            `KerasHubBackbone`.
        name: the model's name (defaults to the hub backbone's).
        **preset_kwargs: only with a preset: passed to `from_preset`
            (`load_weights`, `dtype`, ...).

    Returns:
        A `KerasHubBackbone`.

    Raises:
        ImportError: if `keras-hub` is not installed.
        ValueError: for what cannot be a PCL backbone, each with the fix: a
            KerasHub task (pass `task.backbone`), a model that is not a
            KerasHub backbone (pass it to `PeerCollaborativeModel` directly),
            several inputs (text or multimodal backbones), an output that
            is not a feature map, token sequence or vector, an unknown
            `pooling`, a missing `image_shape`, a hub config that does not
            rebuild the same network at `image_shape` (weights that depend
            on the input size; keras-hub 0.32's EfficientNet config drops
            `num_features`), a layer that cannot be rebuilt from its config
            (keras-hub 0.32's ViT; PCL copies layers), a graph with no split
            point, or a regularizer that could not reach the kernels of a
            layer.

    Example:

    ```python
    import keras_hub

    hub = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
    )  # ResNet-18
    backbone = from_keras_hub(hub, image_shape=(64, 64, 3))
    backbone.default_split_at  # 'stack2_block1_out'
    model = keras_pcl.PeerCollaborativeModel(backbone, num_classes=10)
    ```
    """
    keras_hub = _import_keras_hub()
    if isinstance(backbone, str):
        # Loaded at its own shape, rebuilt at `image_shape` below (not passed
        # here: EfficientNet calls it `input_shape`).
        backbone = keras_hub.models.Backbone.from_preset(backbone, **preset_kwargs)
    elif preset_kwargs:
        raise ValueError(
            "Extra keyword arguments are passed to `from_preset` and only "
            "apply when `backbone` is a preset name or directory. Build the "
            "hub backbone with them instead. Received: "
            f"{', '.join(f'{k}={v!r}' for k, v in preset_kwargs.items())}"
        )
    return KerasHubBackbone(
        backbone,
        pooling=pooling,
        image_shape=image_shape,
        kernel_regularizer=kernel_regularizer,
        name=name,
    )


def preprocessing_from_keras_hub(converter, data_format=None):
    """The `preprocessing` layer that matches a KerasHub `ImageConverter`.

    A `keras.layers.Rescaling(scale, offset)` with the converter's per-channel
    `scale` and `offset`, for `PeerCollaborativeModel(preprocessing=...)`: a
    plain Keras layer that runs inside the compiled step on every backend,
    and is part of the deployed and exported network. The converter's
    resizing (`image_size`) is not included: feed images at the backbone's
    `image_shape`, resized in the input pipeline if need be.

    Args:
        converter: a `keras_hub.layers.ImageConverter`, or a preset (local
            directory or handle) to load one from with
            `keras_hub.layers.ImageConverter.from_preset`.
        data_format: the images' layout; defaults to the converter's.

    Returns:
        A `keras.layers.Rescaling` named `"preprocessing"`.

    Raises:
        ValueError: if the converter neither scales nor offsets (the
            backbone then takes raw pixels: pass a `keras.layers.Identity`).
    """
    keras_hub = _import_keras_hub()
    if isinstance(converter, str):
        converter = keras_hub.layers.ImageConverter.from_preset(converter)
    if not isinstance(converter, keras_hub.layers.ImageConverter):
        raise_invalid(
            "converter",
            converter,
            "a `keras_hub.layers.ImageConverter` or a preset to load one from",
            "For a KerasHub task, pass `task.preprocessor.image_converter`.",
        )
    if converter.scale is None and converter.offset is None:
        raise ValueError(
            "`converter` neither scales nor offsets pixels: its backbone takes "
            "raw pixels, so pass `preprocessing=keras.layers.Identity()` to "
            "`PeerCollaborativeModel`. Received: converter with scale=None "
            "and offset=None"
        )
    data_format = data_format or converter.data_format
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return keras.layers.Rescaling(
        _per_channel(scale, data_format),
        offset=_per_channel(offset, data_format),
        name="preprocessing",
    )


def _per_channel(value, data_format):
    """A float, or per-channel values shaped to broadcast over images."""
    if isinstance(value, (int, float)):
        return float(value)
    values = [float(v) for v in value]
    if data_format == "channels_first":
        return [[[v]] for v in values]
    return values


# ----------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------


def _check_hub_backbone(keras_hub, backbone):
    if isinstance(backbone, keras_hub.models.Task):
        raise ValueError(
            "`backbone` is a KerasHub task, which ends in its own classifier; "
            "PeerCollaborativeModel adds the classifiers. Pass its backbone: "
            "`from_keras_hub(task.backbone)`, and for its pixel conversion "
            "`preprocessing_from_keras_hub(task.preprocessor.image_converter)`. "
            f"Received: backbone={type(backbone).__name__}(name={backbone.name!r})"
        )
    if not isinstance(backbone, keras_hub.models.Backbone):
        raise ValueError(
            "`backbone` must be a `keras_hub.models.Backbone` (e.g. "
            "`keras_hub.models.ResNetBackbone(...)` or `.from_preset(...)`) "
            "or a preset name or directory. Other functional models from "
            "images to features go to `PeerCollaborativeModel` directly. "
            f"Received: backbone={backbone!r}"
        )
    inputs, outputs = backbone.inputs, backbone.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "`backbone` must be an image backbone with one image input and "
            "one output; text and multimodal KerasHub backbones (dict "
            "inputs) cannot be PCL backbones. For a backbone with an image "
            "encoder inside, pass the encoder. Received: "
            f"{type(backbone).__name__} with inputs "
            f"{[tuple(t.shape) for t in inputs]} and {len(outputs)} outputs"
        )
    if _shape_key(backbone) is None:
        raise ValueError(
            "`backbone` must be a KerasHub image backbone (one that takes "
            "`image_shape`). Received: "
            f"{type(backbone).__name__}(name={backbone.name!r})"
        )


def _shape_key(backbone):
    """The config key of the input shape (EfficientNet's is `input_shape`)."""
    config = backbone.get_config()
    for key in ("image_shape", "input_shape"):
        if key in config:
            return key
    return None


def _check_image_shape(backbone, image_shape):
    current = tuple(backbone.inputs[0].shape[1:])
    if image_shape is None:
        if any(dim is None for dim in current):
            raise ValueError(
                "`image_shape` is required: the KerasHub backbone takes "
                f"images of any size {current}, and PCL's augmentation and "
                "deployed networks need a fixed one. Pass the shape of your "
                "images, e.g. `from_keras_hub(backbone, "
                "image_shape=(32, 32, 3))`. Received: image_shape=None"
            )
        return current
    ok = isinstance(image_shape, (tuple, list)) and len(image_shape) == len(current)
    ok = ok and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in image_shape
    )
    if not ok:
        raise_invalid(
            "image_shape",
            image_shape,
            f"a tuple of {len(current)} positive ints, e.g. (32, 32, 3)",
        )
    return tuple(image_shape)


def _rebuilt(backbone, image_shape):
    """A copy of `backbone` rebuilt from its config at `image_shape`.

    What `.keras` loading (and `from_config`) will rebuild, so it is built
    now, and checked to hold the same weights and compute the same features:
    the PCL model's config keeps only the hub backbone's config.
    """
    config = dict(backbone.get_config())
    config[_shape_key(backbone)] = image_shape
    rebuilt = type(backbone).from_config(config)
    built_at = tuple(backbone.inputs[0].shape[1:])
    hint = (
        "Build or load the backbone at the shape you train at instead "
        "(`keras_hub.models.X(..., image_shape=...)`, or "
        "`from_keras_hub(preset, image_shape=...)`)"
    )
    try:
        rebuilt.set_weights(backbone.get_weights())
    except ValueError as error:
        raise ValueError(
            f"{type(backbone).__name__} '{backbone.name}' rebuilt from its "
            f"config at image_shape={image_shape} does not hold the same "
            "weights. Either its weights depend on its input size (a "
            "transformer's position embedding), or its `get_config` misses "
            "an argument (keras-hub 0.32's EfficientNet drops "
            "`num_features`), and a saved PCL model would not reload. "
            f"{hint}; or use a family whose config rebuilds it. Received: "
            f"image_shape={image_shape} for a backbone built at {built_at} "
            f"({error})"
        ) from error
    if all(d is None or d == g for d, g in zip(built_at, image_shape)):
        x = keras.random.uniform((1,) + image_shape, seed=0)
        expected = keras.ops.convert_to_numpy(backbone(x, training=False))
        got = keras.ops.convert_to_numpy(rebuilt(x, training=False))
        scale = float(np.max(np.abs(expected))) or 1.0
        same = expected.shape == got.shape and np.allclose(
            got, expected, rtol=1e-3, atol=1e-4 * scale
        )
        if not same:
            raise ValueError(
                f"{type(backbone).__name__} '{backbone.name}' rebuilt from "
                "its config computes other features than the backbone: its "
                "`get_config` misses an argument, so a saved PCL model would "
                "not reload the network it trained. Use a family whose "
                "config rebuilds it. Received: features of shape "
                f"{got.shape} from the config, {expected.shape} from the "
                "backbone"
            )
    return rebuilt


def _check_rebuildable(backbone):
    """Every layer must come back from its config: PCL copies them.

    `PeerCollaborativeModel` builds the peers, the mean teachers and the
    deployed network with `layer.from_config(layer.get_config())`. Some
    KerasHub layers do not round-trip (keras-hub 0.32: ViT's
    `ViTPatchingAndEmbedding` writes `num_patches`, which its constructor
    refuses); found here rather than deep inside the PCL model.
    """
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            type(layer).from_config(layer.get_config())
        except Exception as error:  # Any failure means no copies.
            raise ValueError(
                f"`backbone` cannot be a PCL backbone: its layer "
                f"'{layer.name}' ({type(layer).__name__}) cannot be rebuilt "
                "from its own config, and PeerCollaborativeModel rebuilds "
                "every layer from its config to make the peers, the mean "
                "teachers and the deployed network. This is a limitation of "
                f"{type(backbone).__name__} in keras-hub "
                f"{_keras_hub_version()}; use a convolutional family "
                "(ResNet, DenseNet, EfficientNet, VGG, ...). Received: "
                f"{type(layer).__name__}.from_config(get_config()) raised "
                f"{type(error).__name__}: {error}"
            ) from error


def _keras_hub_version():
    return getattr(_import_keras_hub(), "__version__", "(unknown version)")


def _check_pooling(pooling, feature_map, backbone):
    rank = len(feature_map.shape)
    if rank == 2:
        if pooling is not None:
            raise_invalid(
                "pooling",
                pooling,
                "None for a backbone whose output is already pooled, "
                f"{tuple(feature_map.shape)}",
            )
        return
    if rank not in (3, 4):
        raise ValueError(
            "`backbone` must output a feature map (batch, height, width, "
            "channels), a token sequence (batch, tokens, dim) or features "
            "(batch, features). Received: "
            f"{type(backbone).__name__} with output shape {feature_map.shape}"
        )
    if pooling not in POOLINGS:
        close = difflib.get_close_matches(str(pooling), POOLINGS, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        kind = "token sequence" if rank == 3 else "feature map"
        raise_invalid(
            "pooling",
            pooling,
            f"one of {list(POOLINGS)} for a {kind} output {tuple(feature_map.shape)}",
            hint,
        )


def _set_kernel_regularizer(backbone, regularizer):
    """Sets `regularizer` on the kernels of the top-level layers.

    On the variable (so that the loss counts it now) and on the layer (so
    that its config, and so every peer that `PeerCollaborativeModel` clones
    from it, has it too). A layer with kernels inside it (a KerasHub
    transformer block) would lose it in that clone: refused.
    """
    if regularizer is None:
        return
    for layer in backbone.layers:
        kernel = getattr(layer, "kernel", None)
        if hasattr(layer, "kernel_regularizer") and kernel is not None:
            layer.kernel_regularizer = regularizer
            kernel.regularizer = regularizer
            continue
        inner = [
            sub.name
            for sub in _compat.flatten_layers(layer)
            if getattr(sub, "kernel", None) is not None
        ]
        if inner:
            raise ValueError(
                "`kernel_regularizer` can only be set on top-level layers: "
                f"layer '{layer.name}' ({type(layer).__name__}) has kernels "
                f"inside it ({inner[:3]}...), which the peers' copies would "
                "rebuild without it. Leave `kernel_regularizer=None` and use "
                "the optimizer's (decoupled) `weight_decay` for this backbone. "
                f"Received: kernel_regularizer={regularizer!r}"
            )


def _pooling_layer(pooling, feature_map, backbone, data_format):
    taken = {layer.name for layer in backbone.layers}
    name = f"{pooling}_pool"
    while name in taken:
        name = f"features_{name}"
    dtype = backbone.dtype_policy
    if len(feature_map.shape) == 3:
        cls = {
            "avg": keras.layers.GlobalAveragePooling1D,
            "max": keras.layers.GlobalMaxPooling1D,
        }[pooling]
        return cls(name=name, dtype=dtype)
    cls = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
    }[pooling]
    return cls(data_format=data_format, name=name, dtype=dtype)


def _default_split(backbone, candidates):
    """The start of the last stage, when the family says where it is."""
    rule = _FAMILY_SPLITS.get(type(backbone).__name__)
    if rule is not None:
        name = rule(backbone)
        return name if name in candidates else None
    pyramid = getattr(backbone, "pyramid_outputs", None) or {}
    levels = sorted(
        (key for key in pyramid if key[1:].isdigit()), key=lambda k: int(k[1:])
    )
    if len(levels) < 2:
        return None
    name = keras_history(pyramid[levels[-2]]).operation.name
    return name if name in candidates else None

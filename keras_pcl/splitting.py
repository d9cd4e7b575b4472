"""Cutting a functional backbone into a shared trunk and a peer head.

Policies for backbones that users bring (documented in `docs/backbones.md`):

* A split must cut the graph in one tensor: the output of the split layer is
  the only tensor that the layers after it read from the layers before it.
  `split_candidates` lists the layers for which this holds.
* A split must name a top-level layer. A layer inside a nested model (e.g. a
  `keras.applications` model called as a layer of a bigger model) is refused
  with a message that says how to flatten the backbone; splitting at the
  nested model itself works.
* The backbone must end in features. A final dense classifier (a `Dense`
  layer with linear, softmax or sigmoid activation, or a softmax/sigmoid
  layer) is refused by `check_backbone` with the name of the layer to cut
  at, instead of silently stacking a second classifier on it.
* For the common `keras.applications` families, `recommended_split` knows the
  layer that starts the last stage (`APPLICATION_SPLITS`); errors quote it.
"""

import copy
import difflib
import re

import keras

from keras_pcl._compat import inbound_node
from keras_pcl._compat import keras_history

# keras.applications families: (family, model-name pattern, pattern of the
# layer that ends the second-to-last stage; the last match is used). Each
# name is checked to exist and to cut the graph by tests/splitting_test.py
# (ResNet50, MobileNetV2, EfficientNetB0) and benchmarks/backbone_table.py
# (all of them).
APPLICATION_SPLITS = (
    ("ResNet50/101/152", r"resnet(50|101|152)", r"conv4_block\d+_out"),
    ("MobileNetV2", r"mobilenetv2_.*", r"block_12_add"),
    ("EfficientNetB0-B7", r"efficientnetb[0-7]", r"block5[a-z]_add"),
    ("DenseNet121/169/201", r"densenet(121|169|201)", r"pool4_pool"),
    ("VGG16/VGG19", r"vgg(16|19)", r"block4_pool"),
    # MobileNetV3: the last stage's first block (stride 2) follows these.
    ("MobileNetV3Small", r"MobileNetV3Small", r"expanded_conv_7_add"),
    ("MobileNetV3Large", r"MobileNetV3Large", r"expanded_conv_11_add"),
)

_APPLICATION_HINT = (
    "For keras.applications models (include_top=False, pooling='avg'), the "
    "last stage starts after: ResNet50 'conv4_block6_out', ResNet101 "
    "'conv4_block23_out', MobileNetV2 'block_12_add', EfficientNetB0 "
    "'block5c_add', DenseNet121 'pool4_pool', VGG16 'block4_pool', "
    "MobileNetV3Small 'expanded_conv_7_add', MobileNetV3Large "
    "'expanded_conv_11_add'."
)


def split_backbone(backbone, split_at):
    """Splits `backbone` after layer `split_at`.

    Args:
        backbone: a built functional `keras.Model` (or a built `Sequential`)
            from images to a pooled feature vector `(batch, features)`.
        split_at: name of the layer whose output ends the shared trunk. Its
            output must be the only tensor that the layers after it read
            from the layers before it.

    Returns:
        `(trunk, head)`: two functional models, `images -> split tensor` and
        `split tensor -> features`. They share layers with `backbone`.

    Raises:
        ValueError: if `backbone` fails `check_backbone` (e.g. it ends in a
            classifier), if `split_at` is not a top-level layer of
            `backbone` (a layer inside a nested model gets a message on how
            to flatten it), names its input or last layer, or does not cut
            the graph in one tensor. Messages list the valid split layers
            and, where known, `recommended_split(backbone)`.

    Example:

    >>> from keras_pcl.backbones import CIFARResNet
    >>> trunk, head = split_backbone(CIFARResNet(depth=8), "stage2_block1_out")
    >>> head.output.shape
    (None, 64)
    """
    check_backbone(backbone)
    names = [layer.name for layer in backbone.layers]
    if not isinstance(split_at, str) or split_at not in names:
        path = _nested_path(backbone, split_at) if isinstance(split_at, str) else None
        if path:
            outer = path[0]
            raise ValueError(
                f"Layer '{split_at}' is inside the nested model '{outer}' "
                f"(path {'/'.join(path)}), and a split must be a top-level "
                "layer of the backbone. Either split at the nested model "
                f"itself (split_at={outer!r}: all of it is shared), or "
                "flatten the backbone: build it on the nested model's "
                "tensors instead of calling the model as a layer, e.g. "
                f"`inner = backbone.get_layer({outer!r})`, apply the layers "
                "that follow it to `inner.output`, and make "
                "`keras.Model(inner.input, features)` (for keras.applications: "
                "`base = keras.applications.X(include_top=False, ...)`, then "
                "`keras.Model(base.input, f(base.output))`). "
                f"Received: split_at={split_at!r}"
            )
        candidates = split_candidates(backbone)
        close = difflib.get_close_matches(str(split_at), candidates, n=5)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"`split_at` must name a layer of the backbone "
            f"'{backbone.name}'.{hint}{_recommendation(backbone)} Valid split "
            f"layers: {_abbreviate(candidates)}. Received: split_at={split_at!r}"
        )
    layer = backbone.get_layer(split_at)
    if isinstance(layer, keras.layers.InputLayer):
        raise ValueError(
            "`split_at` names the backbone's input layer, which leaves no "
            "layers for the shared trunk. Pick a later layer, e.g. one of "
            f"{_abbreviate(split_candidates(backbone))}. "
            f"Received: split_at={split_at!r}"
        )
    split_tensor = _single_output(layer, split_at, _graph_outputs(backbone))
    if any(split_tensor is out for out in backbone.outputs):
        raise ValueError(
            f"`split_at` names the backbone's last layer, which leaves "
            "nothing for the peers. Pick an earlier layer, e.g. one of "
            f"{_abbreviate(split_candidates(backbone))}. "
            f"Received: split_at={split_at!r}"
        )
    if not _separates(backbone, split_tensor):
        raise ValueError(
            f"The output of layer '{split_at}' does not cut the backbone in "
            "one tensor: a layer after it also reads a tensor from before it "
            "(e.g. a residual connection that crosses the split). Split at "
            "the end of a block instead: "
            f"{_abbreviate(split_candidates(backbone))}."
            f"{_recommendation(backbone)} "
            f"Received: split_at={split_at!r}"
        )
    trunk = keras.Model(backbone.inputs[0], split_tensor, name="trunk")
    head = keras.Model(split_tensor, backbone.outputs[0], name="peer_head")
    return trunk, head


def split_candidates(backbone):
    """Names of the layers whose output alone separates input from output.

    Any of them is a valid `split_at` for `PeerCollaborativeModel`; the later
    the split, the more of the network each peer owns.

    Args:
        backbone: a built functional `keras.Model`.

    Returns:
        A list of layer names, in graph order.

    Example:

    >>> from keras_pcl.backbones import CIFARResNet
    >>> "stage2_block1_out" in split_candidates(CIFARResNet(depth=8))
    True
    """
    check_backbone(backbone)
    final = backbone.outputs[0]
    graph_outputs = _graph_outputs(backbone)
    candidates = []
    # `Sequential.layers` has no InputLayer: skip inputs by type, not index.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        outputs = _layer_outputs(layer, graph_outputs)
        if len(outputs) != 1 or outputs[0] is final:
            continue
        if _separates(backbone, outputs[0]):
            candidates.append(layer.name)
    return candidates


def recommended_split(backbone):
    """The layer that starts the backbone's last stage, when it is known.

    That is where spec section 6 branches the peers. Known are the built-in
    backbones (their `default_split_at`) and the `keras.applications`
    families of `APPLICATION_SPLITS` under their default model names
    (ResNet50/101/152, MobileNetV2, MobileNetV3Small/Large,
    EfficientNetB0-B7, DenseNet121/169/201, VGG16/19). For other backbones
    pick one of `split_candidates(backbone)` (`suggested_split` names the
    one before the last downsampling).

    Args:
        backbone: a built functional `keras.Model`.

    Returns:
        A layer name that is a valid `split_at`, or None.

    Example:

    >>> import keras
    >>> base = keras.applications.MobileNetV2(
    ...     weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3)
    ... )
    >>> recommended_split(base)
    'block_12_add'
    """
    check_backbone(backbone)
    default = getattr(backbone, "default_split_at", None)
    if default is not None:
        return default
    for _, model_pattern, layer_pattern in APPLICATION_SPLITS:
        if not re.fullmatch(model_pattern, backbone.name):
            continue
        matches = [
            layer
            for layer in backbone.layers
            if re.fullmatch(layer_pattern, layer.name)
        ]
        if matches:
            outputs = _layer_outputs(matches[-1], _graph_outputs(backbone))
            if len(outputs) == 1 and _separates(backbone, outputs[0]):
                return matches[-1].name
    return None


def suggested_split(backbone):
    """A likely start of the last stage, for a backbone of no known family.

    The last of `split_candidates(backbone)` whose output is spatially
    larger than the backbone's last feature map (the layer before the
    final downsampling), or None if there is no such layer. Only a
    suggestion for error messages: `recommended_split` is what a model
    uses.
    """
    candidates = split_candidates(backbone)
    graph_outputs = _graph_outputs(backbone)
    sizes = []
    for name in candidates:
        outputs = _layer_outputs(backbone.get_layer(name), graph_outputs)
        shape = tuple(outputs[0].shape) if len(outputs) == 1 else ()
        sizes.append(shape[1:-1] if len(shape) == 4 else None)
    spatial = [s for s in sizes if s is not None and None not in s]
    if not spatial:
        return None
    smallest = min(a * b for a, b in spatial)
    for name, size in reversed(list(zip(candidates, sizes))):
        if size is not None and None not in size and size[0] * size[1] > smallest:
            return name
    return None


# Layers that turn raw pixels into network inputs. keras.applications
# families with `include_preprocessing` (EfficientNet, EfficientNetV2,
# ConvNeXt, MobileNetV3, RegNet) begin with one of these.
PREPROCESSING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


def own_preprocessing(backbone):
    """The preprocessing layer a backbone begins with, or None.

    A backbone whose input goes straight into a `Rescaling` or
    `Normalization` layer (directly, or as the first layer of a nested
    model) scales raw pixels itself; keras-pcl then adds no preprocessing
    of its own in front of it.

    Args:
        backbone: a built functional `keras.Model`.

    Returns:
        The first such layer, or None.

    Example:

    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    >>> x = keras.layers.Conv2D(4, 3)(x)
    >>> features = keras.layers.GlobalAveragePooling2D()(x)
    >>> own_preprocessing(keras.Model(inputs, features)).name
    'scale'
    """
    if not isinstance(backbone, keras.Model) or not backbone.inputs:
        return None
    graph = _graph_outputs(backbone)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        calls = graph.get(id(layer), [])
        reads_input = any(
            any(t is i for t in node.input_tensors for i in backbone.inputs)
            for node, _ in calls
        )
        if not reads_input:
            continue
        if isinstance(layer, PREPROCESSING_LAYERS):
            return layer
        if isinstance(layer, keras.Model):
            nested = own_preprocessing(layer)
            if nested is not None:
                return nested
    return None


def check_backbone(backbone):
    """Raises a clear error unless `backbone` is a usable PCL backbone.

    That is a built functional `keras.Model` (or a `Sequential` model with an
    `Input`) with one image input and one output of shape `(batch, features)`
    that is not a classifier: a final `Dense` layer with linear, softmax or
    sigmoid activation, or a final softmax/sigmoid layer, is refused (drop
    it, or end the model with `keras.layers.Identity` if it really computes
    features).

    Args:
        backbone: the model to check.

    Raises:
        ValueError: naming what is wrong and how to fix it.

    Example:

    >>> from keras_pcl.backbones import CIFARResNet
    >>> check_backbone(CIFARResNet(depth=8))  # no error
    """
    if not isinstance(backbone, keras.Model):
        raise ValueError(
            "`backbone` must be a functional `keras.Model` from images to a "
            f"pooled feature vector. Received: backbone={backbone!r}"
        )
    try:
        inputs = backbone.inputs
        outputs = backbone.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            "`backbone` must be a built functional `keras.Model` (or a "
            "`Sequential` model with an `Input`), so that its layers can be "
            "split into a trunk and peers. Subclassed models have no graph "
            "to split; build your network with the functional API. "
            f"Received: backbone={backbone.__class__.__name__}"
            f"(name={backbone.name!r})"
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            "`backbone` must have one image input and one feature output. "
            f"Received: {len(inputs)} inputs and {len(outputs)} outputs"
        )
    if len(outputs[0].shape) != 2:
        raise ValueError(
            "`backbone` must end in a pooled feature vector of shape "
            "(batch, features), e.g. with `GlobalAveragePooling2D()`; for "
            "`keras.applications` models pass `include_top=False, "
            f"pooling='avg'`. Received: output shape {outputs[0].shape}"
        )
    classifier = _final_classifier(outputs[0])
    if classifier is not None:
        layer, description, features = classifier
        raise ValueError(
            "`backbone` must end in features, but it ends in a classifier: "
            f"layer '{layer.name}' ({description}). PeerCollaborativeModel "
            "adds its own classifiers and would stack a second one on it. "
            "Drop it: `keras.Model(backbone.input, "
            f"backbone.get_layer({features!r}).output)`; for "
            "keras.applications models pass `include_top=False, "
            "pooling='avg'`. If that layer really computes features, end "
            "the backbone with `keras.layers.Identity(name='features')` "
            f"after it. Received: backbone={backbone.name!r} whose output "
            f"layer is {keras_history(outputs[0]).operation.__class__.__name__}"
            f"(name={keras_history(outputs[0]).operation.name!r})"
        )


def fresh_clone(model, name):
    """`keras.models.clone_model` with new weights and prefixed layer names.

    Seeded initializers draw the same values each time; their seeds are
    dropped so that every peer starts from its own random weights (spec
    section 6). Unseeded draws still follow `keras.utils.set_random_seed`.

    Layers are renamed `{name}_{layer name}` so that every variable of the
    PCL model has its own path: Keras' torch backend registers variables with
    torch by path, and two variables with one path make `zero_grad` miss one
    of them, whose gradients then pile up from step to step.

    Args:
        model: a functional model.
        name: the name of the returned model and the prefix of its layers.
    """

    def clone_layer(layer):
        config = layer.get_config()
        config["name"] = f"{name}_{layer.name}"
        for key, value in config.items():
            if (
                key.endswith("_initializer")
                and isinstance(value, dict)
                and isinstance(value.get("config"), dict)
                and value["config"].get("seed") is not None
            ):
                value = copy.deepcopy(value)
                value["config"]["seed"] = None
                config[key] = value
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    return keras.Model(clone.inputs[0], clone.outputs[0], name=name)


_CLASSIFIER_ACTIVATIONS = ("linear", "softmax", "sigmoid", "log_softmax")


def _activation_name(function):
    return getattr(function, "__name__", str(function))


def _final_classifier(output):
    """`(layer, description, features layer name)` if `output` is logits."""
    layer = keras_history(output).operation
    if isinstance(layer, keras.layers.Dense):
        activation = _activation_name(layer.activation)
        if activation not in _CLASSIFIER_ACTIVATIONS:
            return None
        description = f"Dense with activation {activation!r}"
    elif isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation)
        and _activation_name(layer.activation) in _CLASSIFIER_ACTIVATIONS[1:]
    ):
        # Probabilities; the classifier is the dense layer before, if any.
        (previous,) = _inbound_tensors(output)[:1] or (None,)
        if previous is None:
            return None
        dense = keras_history(previous).operation
        description = f"{layer.__class__.__name__} giving probabilities"
        if isinstance(dense, keras.layers.Dense):
            description = f"Dense followed by {layer.__class__.__name__} '{layer.name}'"
            layer, output = dense, previous
    else:
        return None
    inputs = _inbound_tensors(output)
    if len(inputs) != 1:
        return None
    return layer, description, keras_history(inputs[0]).operation.name


def _inbound_tensors(tensor):
    return list(inbound_node(tensor).input_tensors)


def _nested_path(model, name):
    """Names from `model`'s top-level layer down to layer `name`, or None."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if any(inner.name == name for inner in layer.layers):
                return [layer.name, name]
            path = _nested_path(layer, name)
            if path:
                return [layer.name] + path
    return None


def _recommendation(backbone):
    split = recommended_split(backbone)
    if split is not None:
        return (
            f" The recommended split for this backbone (where its last "
            f"stage begins) is {split!r}."
        )
    return " " + _APPLICATION_HINT


def _graph_outputs(backbone):
    """`id(layer) -> [output tensors of its calls in backbone's graph]`.

    Not `layer.output`: for a nested model that is the output of its own
    inner graph, not of its call in the backbone.
    """
    outputs = {}
    seen = set()
    stack = list(backbone.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        node = inbound_node(tensor)
        calls = outputs.setdefault(id(keras_history(tensor).operation), [])
        if not any(id(node) == id(n) for n, _ in calls):
            calls.append((node, list(node.output_tensors)))
        stack.extend(node.input_tensors)
    return outputs


def _layer_outputs(layer, graph_outputs):
    calls = graph_outputs.get(id(layer), [])
    if len(calls) != 1:
        # Not in the graph, or called more than once: no single output.
        return []
    return calls[0][1]


def _single_output(layer, name, graph_outputs):
    outputs = _layer_outputs(layer, graph_outputs)
    if len(outputs) != 1:
        raise ValueError(
            f"`split_at` must name a layer called once with a single output. "
            f"Layer '{name}' has {len(outputs) or 'no single'} output"
            f"{'' if len(outputs) == 1 else 's'}. Received: split_at={name!r}"
        )
    return outputs[0]


def _separates(backbone, split_tensor):
    """True if every path from the output back to the input meets the split."""
    input_ids = {id(t) for t in backbone.inputs}
    seen = set()
    stack = list(backbone.outputs)
    reached_split = False
    while stack:
        tensor = stack.pop()
        if tensor is split_tensor:
            reached_split = True
            continue
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in input_ids:
            return False
        node = inbound_node(tensor)
        stack.extend(node.input_tensors)
    return reached_split


def _abbreviate(names, limit=12):
    if len(names) <= limit:
        return str(names)
    return str(names[: limit // 2] + ["..."] + names[-limit // 2 :])

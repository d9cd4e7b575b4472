"""Cutting a functional backbone into a shared trunk and a peer head."""

import copy
import difflib

import keras


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
        ValueError: if `split_at` is not a layer of `backbone`, names its
            input or last layer, or does not cut the graph in one tensor.
    """
    check_backbone(backbone)
    names = [layer.name for layer in backbone.layers]
    if not isinstance(split_at, str) or split_at not in names:
        candidates = split_candidates(backbone)
        close = difflib.get_close_matches(str(split_at), candidates, n=5)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"`split_at` must name a layer of the backbone "
            f"'{backbone.name}'.{hint} Valid split layers: "
            f"{_abbreviate(candidates)}. Received: split_at={split_at!r}"
        )
    layer = backbone.get_layer(split_at)
    if isinstance(layer, keras.layers.InputLayer):
        raise ValueError(
            "`split_at` names the backbone's input layer, which leaves no "
            "layers for the shared trunk. Pick a later layer, e.g. one of "
            f"{_abbreviate(split_candidates(backbone))}. "
            f"Received: split_at={split_at!r}"
        )
    split_tensor = _single_output(layer, split_at)
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
            f"{_abbreviate(split_candidates(backbone))}. "
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
    candidates = []
    for layer in backbone.layers[1:-1]:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        outputs = _layer_outputs(layer)
        if len(outputs) != 1:
            continue
        if _separates(backbone, outputs[0]):
            candidates.append(layer.name)
    return candidates


def check_backbone(backbone):
    """Raises a clear error unless `backbone` is a built functional model."""
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


def _layer_outputs(layer):
    output = layer.output
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _single_output(layer, name):
    outputs = _layer_outputs(layer)
    if len(outputs) != 1:
        raise ValueError(
            f"`split_at` must name a layer with a single output. Layer "
            f"'{name}' has {len(outputs)}. Received: split_at={name!r}"
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
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        stack.extend(node.input_tensors)
    return reached_split


def _abbreviate(names, limit=12):
    if len(names) <= limit:
        return str(names)
    return str(names[: limit // 2] + ["..."] + names[-limit // 2 :])

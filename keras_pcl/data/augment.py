"""Host-side augmentation: `num_views` independent views of every image.

PCL trains each peer on its own random augmentation of the batch (spec
section 2). The model can draw those views itself (its `augmentation`
argument, run on the accelerator), or the input pipeline can draw them on
the host and yield a tuple of `num_views` uint8 images per example, which
`PeerCollaborativeModel` accepts as `x` (one view per peer). This module is
the host side. Everything runs in TensorFlow inside `tf.data`, so it feeds
every Keras backend.

Policies (the `augmentation` argument of the loaders and of `view_function`):

* `"default"`: the paper's augmentation (spec section 7). CIFAR and image
  folders: zero-pad by `max(1, size // 8)` pixels (4 for 32x32), random crop
  back to size, random horizontal flip: the same policy as the in-model
  `keras_pcl.augmentation.default_augmentation`. ImageNet: random resized
  crop to 224 (scale 0.08-1, aspect ratio 3/4-4/3) + random horizontal flip;
  evaluation images are resized to 256 on the shorter side and centre-cropped
  to 224.
* `"randaugment"`, `"augmix"`: the default policy followed by Keras' own
  `keras.layers.RandAugment` / `keras.layers.AugMix` (no extra dependency).
* `"keras_cv.randaugment"`, `"keras_cv.augmix"`: the default policy followed
  by the keras-cv layer of that name (optional extra:
  `pip install keras-cv`). keras-cv layers run on TensorFlow only; inside
  `tf.data` they feed a model on any backend.
* A Keras preprocessing layer or any TensorFlow-traceable callable: the
  default policy followed by it, applied to one float32 image in [0, 255].
* `None`: no random augmentation (ImageNet images are still resized and
  centre-cropped, so that they batch).

The random draws use stateless TensorFlow ops seeded per example and per
view from `tf.data.Dataset.random(seed)`, so with a fixed `seed` and
`tf.data.Options.deterministic` the views are reproducible, and new in every
epoch. Keras and keras-cv layers draw from their own generators and are not
reproducible from `seed`.
"""

import tensorflow as tf

IMAGENET_IMAGE_SIZE = 224
IMAGENET_RESIZE = 256
IMAGENET_SCALE = (0.08, 1.0)
IMAGENET_RATIO = (3.0 / 4.0, 4.0 / 3.0)

STRONG_POLICIES = (
    "randaugment",
    "augmix",
    "keras_cv.randaugment",
    "keras_cv.augmix",
)


def pad_crop_flip(image, seed, padding=4):
    """The paper's CIFAR augmentation of one image: pad, random crop, flip.

    Args:
        image: a `(height, width, channels)` uint8 tensor.
        seed: a shape `(2,)` int tensor, the stateless seed of the draws.
        padding: int >= 1, pixels of zero padding on each side.

    Returns:
        A uint8 tensor of the same shape: the image shifted by a random
        offset in `[-padding, padding]` (zero fill), flipped left-right
        with probability 1/2.

    Example:

    ```python
    view = pad_crop_flip(tf.zeros((32, 32, 3), "uint8"), seed=[1, 2])
    ```
    """
    crop_seed, flip_seed = _split_seed(seed, 2)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def random_resized_crop_flip(
    image,
    seed,
    size=IMAGENET_IMAGE_SIZE,
    scale=IMAGENET_SCALE,
    ratio=IMAGENET_RATIO,
):
    """The paper's ImageNet augmentation: random resized crop and flip.

    A crop covering `scale` of the image area with an aspect ratio in
    `ratio` is drawn (Inception-style, 10 attempts, falling back to the
    whole image), resized bilinearly to `size x size` and flipped
    left-right with probability 1/2.

    Args:
        image: a `(height, width, 3)` uint8 tensor of any size.
        seed: a shape `(2,)` int tensor, the stateless seed of the draws.
        size: int, the output height and width.
        scale: `(min, max)` fraction of the image area.
        ratio: `(min, max)` aspect ratio (width / height).

    Returns:
        A `(size, size, 3)` uint8 tensor.

    Example:

    ```python
    view = random_resized_crop_flip(image, seed=[0, 1])  # (224, 224, 3)
    ```
    """
    box_seed, flip_seed = _split_seed(seed, 2)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=box_seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = _to_uint8(tf.image.resize(image, (size, size), method="bilinear"))
    image = tf.ensure_shape(image, (size, size, 3))
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def resize_center_crop(image, resize=IMAGENET_RESIZE, size=IMAGENET_IMAGE_SIZE):
    """ImageNet evaluation preprocessing: resize shorter side, centre crop.

    Args:
        image: a `(height, width, 3)` uint8 tensor of any size.
        resize: int, the length the shorter side is resized to (bilinear).
        size: int, the side of the square centre crop.

    Returns:
        A `(size, size, 3)` uint8 tensor.

    Example:

    ```python
    image = resize_center_crop(image)  # (224, 224, 3)
    ```
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = resize / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), size)
    image = _to_uint8(tf.image.resize(image, new_shape, method="bilinear"))
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    image = image[top : top + size, left : left + size]
    return tf.ensure_shape(image, (size, size, 3))


def view_function(augmentation="default", base=pad_crop_flip):
    """Builds the function that draws one training view of one image.

    Args:
        augmentation: a policy (see the module docstring): `"default"`,
            `"randaugment"`, `"augmix"`, `"keras_cv.randaugment"`,
            `"keras_cv.augmix"`, a Keras preprocessing layer, a callable,
            or None.
        base: the dataset's default policy, `fn(image, seed) -> image`
            (e.g. `pad_crop_flip` or `random_resized_crop_flip`).

    Returns:
        `fn(image, seed) -> uint8 image`, for `multi_view`.

    Raises:
        ValueError: for an unknown policy name or a non-callable.
        ImportError: for a `keras_cv.*` policy when keras-cv is not
            installed (with the pip line that installs it).

    Example:

    ```python
    fn = view_function("randaugment")
    ds = multi_view(ds, num_views=3, view_fn=fn, seed=0)
    ```
    """
    if augmentation is None:
        return lambda image, seed: image
    if isinstance(augmentation, str):
        if augmentation == "default":
            return base
        layer = strong_policy(augmentation)
    elif callable(augmentation):
        layer = augmentation
    else:
        raise ValueError(
            "`augmentation` must be 'default', one of "
            f"{list(STRONG_POLICIES)}, a Keras layer, a callable or None. "
            f"Received: augmentation={augmentation!r}"
        )

    def fn(image, seed):
        image = base(image, seed)
        return _to_uint8(layer(tf.cast(image, tf.float32)))

    return fn


def check_augmentation(augmentation):
    """Raises if `augmentation` is not a policy `view_function` accepts.

    Args:
        augmentation: the policy to check.

    Raises:
        ValueError: for an unknown name or a non-callable.
        ImportError: for a keras-cv policy without keras-cv installed.
    """
    if augmentation is None or augmentation == "default":
        return
    if isinstance(augmentation, str):
        strong_policy(augmentation)
    elif not callable(augmentation):
        view_function(augmentation)


def strong_policy(name):
    """A stronger augmentation layer for raw pixels, by name.

    Args:
        name: `"randaugment"` or `"augmix"` (Keras core layers, any backend
            in `tf.data`, and in the model), or `"keras_cv.randaugment"` /
            `"keras_cv.augmix"` (keras-cv: TensorFlow only, so in `tf.data`
            for any backend, in the model only under TensorFlow).

    Returns:
        A Keras layer taking images with values in [0, 255].

    Raises:
        ValueError: for an unknown name.
        ImportError: for a keras-cv policy without keras-cv installed.

    Example:

    ```python
    layer = strong_policy("randaugment")
    ```
    """
    if name not in STRONG_POLICIES:
        raise ValueError(
            f"Unknown augmentation policy; expected 'default' or one of "
            f"{list(STRONG_POLICIES)}. Received: augmentation={name!r}"
        )
    if name.startswith("keras_cv."):
        try:
            import keras_cv
        except ImportError as error:
            raise ImportError(
                f"augmentation={name!r} needs keras-cv. Install it with "
                "`pip install keras-cv` (or `pip install keras-pcl[cv]`), or "
                "use the Keras core policies 'randaugment' / 'augmix'."
            ) from error
        layers = keras_cv.layers
        name = name[len("keras_cv.") :]
    else:
        import keras

        layers = keras.layers
    if name == "randaugment":
        return layers.RandAugment(value_range=(0, 255))
    return layers.AugMix(value_range=(0, 255))


def multi_view(dataset, num_views, view_fn, seed=None, num_parallel_calls=None):
    """Maps `(image, label)` to `((view_1, ..., view_n), label)`.

    Each view is an independent draw of `view_fn` on the same image; the
    label is passed through unchanged. Apply it to an unbatched dataset (one
    image per element), before `batch`.

    Args:
        dataset: a `tf.data.Dataset` of `(image, label)` pairs, images of
            shape `(height, width, channels)`.
        num_views: int >= 1, views per image (the model's `num_peers`).
        view_fn: `fn(image, seed) -> image`, e.g. from `view_function`.
        seed: optional int; with it, the draws are reproducible (given
            `tf.data.Options.deterministic`) and differ in every epoch.
        num_parallel_calls: `map` parallelism; defaults to AUTOTUNE.

    Returns:
        A `tf.data.Dataset` of `(tuple_of_views, label)`.

    Raises:
        ValueError: if `num_views` is not an int >= 1.

    Example:

    ```python
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = multi_view(ds, 3, view_function("default"), seed=0).batch(128)
    model.fit(ds)  # x is a tuple of 3 views, one per peer
    ```
    """
    if isinstance(num_views, bool) or not isinstance(num_views, int) or (num_views < 1):
        raise ValueError(
            "`num_views` must be an int >= 1 (the model's `num_peers`). "
            f"Received: num_views={num_views!r}"
        )
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def views(example, element_seed):
        image, label = example
        return (
            tuple(
                view_fn(image, tf.stack([element_seed, tf.constant(j, tf.int64)]))
                for j in range(num_views)
            ),
            label,
        )

    return tf.data.Dataset.zip((dataset, seeds)).map(
        views, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE
    )


def _split_seed(seed, num):
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

"""Issue #16's experiment: a backbone with its own `Rescaling` under PCL.

Two CIFAR-10 classes (airplane, frog), 300 training images each and a
held-out validation split of the same folder (`list_image_folder`, seed 0,
class-balanced), a 3-convolution backbone that begins with
`Rescaling(1/255)`, 8 epochs of Adam(3e-3) at batch 32, on the current
backend. It prints the validation accuracy of

* plain Keras: `backbone -> Dense` trained with `fit`;
* PCL with keras-pcl's default preprocessing (which, before the fix, put a
  second `Rescaling(1/255)` in front of the backbone's own);
* PCL with `preprocessing=keras.layers.Identity()` (what the issue found
  to work).

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/double_preprocessing.py
    done

Only the validation split is scored.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_pcl
from keras_pcl.data import list_image_folder

FOLDER = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10", "train"
)


def load(folder, classes, per_class, seed=0):
    """`per_class` training and 100 validation images of each class."""
    import tensorflow as tf

    listing = list_image_folder(folder, validation_split=0.02, seed=seed)
    names = listing.class_names
    wanted = [names.index(c) for c in classes]

    def pick(paths, labels, limit):
        out_x, out_y = [], []
        for new, old in enumerate(wanted):
            chosen = [p for p, y in zip(paths, labels) if y == old][:limit]
            for path in chosen:
                image = tf.io.decode_image(tf.io.read_file(path), channels=3)
                out_x.append(image.numpy())
                out_y.append(new)
        return np.stack(out_x), np.array(out_y, "int32")

    train = pick(listing.train_paths, listing.train_labels, per_class)
    validation = pick(listing.validation_paths, listing.validation_labels, 100)
    return train, validation


def backbone():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255, name="own_rescaling")(inputs)
    for i, width in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(name=f"block{i + 1}_out")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D()(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name="three_conv")


def run(kind, train, validation, epochs, seed):
    keras.utils.set_random_seed(seed)
    (x, y), (x_val, y_val) = train, validation
    start = time.perf_counter()
    if kind == "plain":
        inputs = keras.Input((32, 32, 3))
        model = keras.Model(inputs, keras.layers.Dense(2)(backbone()(inputs)))
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
        accuracy = model.evaluate(x_val, y_val, verbose=0)[1]
    else:
        kwargs = {}
        if kind == "pcl_identity":
            kwargs["preprocessing"] = keras.layers.Identity()
        model = keras_pcl.PeerCollaborativeModel(
            backbone(), 2, split_at="block2_out", rampup_steps=100, **kwargs
        )
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
        scores = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
        accuracy = scores[f"mean_teacher_{model.deploy_peer}_accuracy"]
        kind = f"{kind} ({type(model.preprocessing).__name__})"
    return kind, float(accuracy), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=FOLDER)
    parser.add_argument("--per_class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    train, validation = load(args.folder, ("airplane", "frog"), args.per_class)
    rows = [
        run(kind, train, validation, args.epochs, args.seed)
        for kind in ("plain", "pcl_default", "pcl_identity")
    ]
    print(f"backend {keras.backend.backend()}, {len(train[0])} training images")
    for kind, accuracy, seconds in rows:
        print(
            f"  {kind:<36} validation accuracy {100 * accuracy:5.1f}%  {seconds:5.1f} s"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": keras.backend.backend(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

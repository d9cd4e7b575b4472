"""Prints the table of built-in backbones in `docs/backbones.md`.

For every name in `keras_pcl.backbones.names()`, at its default input size
(32x32, 224x224 for resnet18) and `--num_classes` classes (`--imagenet_classes`
for resnet18): the parameters of
the deployed network (`model.get_peer(0)`: trunk + one peer + classifier),
those of the whole training-time `PeerCollaborativeModel` with `m` peers
(students, ensemble classifier, mean teachers and bookkeeping scalars), and
the split layer. Parameters are `count_params()`, so they include batch-norm
moving statistics. It also checks the `keras.applications` split names of
`keras_pcl.splitting.APPLICATION_SPLITS`.

Usage:

    KERAS_BACKEND=tensorflow python benchmarks/backbone_table.py --num_classes=100
"""

import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_classes", 100, "Classes of the CIFAR backbones' classifier.")
flags.DEFINE_integer(
    "imagenet_classes", 1000, "Classes of the ImageNet backbone (resnet18)."
)
flags.DEFINE_list("names", None, "Only these backbones (default: all).")
flags.DEFINE_integer("num_peers", 3, "PCL peers `m`.")
flags.DEFINE_bool("applications", True, "Also check keras.applications splits.")


def main(argv):
    del argv
    import keras

    import keras_pcl
    from keras_pcl.splitting import recommended_split
    from keras_pcl.splitting import split_candidates

    print(
        "| name | class | classes | deployed parameters "
        f"| PCL model parameters (m={FLAGS.num_peers}) | split layer |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name in FLAGS.names or keras_pcl.backbones.names():
        backbone = keras_pcl.backbones.get(name)
        classes = FLAGS.imagenet_classes if name == "resnet18" else FLAGS.num_classes
        model = keras_pcl.PeerCollaborativeModel(
            backbone, num_classes=classes, num_peers=FLAGS.num_peers
        )
        deployed = model.get_peer(0).count_params()
        print(
            f"| `{name}` | `{backbone.__class__.__name__}` | {classes} | {deployed:,} "
            f"| {model.count_params():,} | `{backbone.default_split_at}` |",
            flush=True,
        )
    if not FLAGS.applications:
        return
    print("\n| keras.applications | recommended split | cuts the graph |")
    print("| --- | --- | --- |")
    for ctor in (
        keras.applications.ResNet50,
        keras.applications.ResNet101,
        keras.applications.ResNet152,
        keras.applications.MobileNetV2,
        keras.applications.MobileNetV3Small,
        keras.applications.MobileNetV3Large,
        keras.applications.EfficientNetB0,
        keras.applications.EfficientNetB7,
        keras.applications.DenseNet121,
        keras.applications.DenseNet201,
        keras.applications.VGG16,
        keras.applications.VGG19,
    ):
        base = ctor(
            weights=None, include_top=False, pooling="avg", input_shape=(64, 64, 3)
        )
        split = recommended_split(base)
        ok = split in split_candidates(base)
        print(f"| `{ctor.__name__}` | `{split}` | {ok} |", flush=True)


if __name__ == "__main__":
    sys.exit(app.run(main))

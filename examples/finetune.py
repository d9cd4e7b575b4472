"""Fine-tune a pretrained keras.applications backbone with PCL on an image folder.

    python examples/finetune.py --dataset=path/to/train_folder \
        --backbone_weights=imagenet --workdir=runs/ft        # needs internet
    python examples/finetune.py --dataset=path/to/train_folder \
        --backbone_weights=mobilenet_v2.weights.h5 --workdir=runs/ft
    keras-pcl evaluate runs/ft/export --dataset=path/to/test_folder --split=all

Defaults (`keras_pcl.training.finetune_config`): MobileNetV2 at 224x224
(`--backbone=EfficientNetB0`, `ResNet50`, ... and `--image_size` for
others), 3 peers that all start from the backbone's weights
(`--peer_initialization=backbone`; the classifiers are fresh), SGD with
Nesterov momentum at a learning rate of 0.01 divided by 10 at epochs 20
and 25 of 30, weight decay 1e-4, a 5-epoch ramp-up of the distillation,
batch 64. Images keep the scaling the weights were trained with (the
family's `preprocess_input`, inside the model). A weights file is
`keras.applications.MobileNetV2(include_top=False, pooling="avg",
weights="imagenet").save_weights("mobilenet_v2.weights.h5")`, made once on
a machine with internet.

What to expect: with ImageNet weights, every peer starts from the
pretrained features, so the validation accuracy of the first epoch is
already far above chance, where a from-scratch run (`--backbone_weights`
unset, `--peer_initialization=fresh`) needs many epochs to get there; how
high it ends depends on the folder (no figure is claimed here). The run
prints the best peer and its validation accuracy, and leaves the final
model `pcl.keras` and the best peer's mean teacher exported to `export` (a
SavedModel; `--export_format=keras` on torch) in --workdir. To freeze
the trunk for the first epochs, see "Fine-tune a pretrained backbone" in
README.md (`model.trunk.trainable = False`, then `compile` and `fit`).
"""

from absl import app

from keras_pcl import training

training.define_flags(defaults=training.finetune_config())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = training.train(training.config_from_flags())
    best = result["best_peer"]
    print(f"Best peer: {best}" if best else "No validation accuracy recorded.")
    print(f"Final model: {result['paths']['model']}")
    if result["exported_peer"] is not None:
        print(f"Exported peer {result['exported_peer']}: {result['paths']['export']}")
        print(f"  ({result['exported_peer_reason']})")


if __name__ == "__main__":
    app.run(main)

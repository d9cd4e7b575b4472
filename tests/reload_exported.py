"""Reloads exported peers with each format's own runtime (run in a fresh process).

Usage: python tests/reload_exported.py IMAGES.npy OUT_DIR FORMAT=PATH ...

Writes `OUT_DIR/{format}_logits.npy` and `OUT_DIR/{format}_probabilities.npy`
(for "keras", which holds the plain network, only the logits). Used by
`tests/export_test.py`; it imports no keras-pcl code.
"""

import os
import sys

import numpy as np


def reload_and_predict(format, path, images):
    if format == "keras":
        import keras

        model = keras.saving.load_model(path)
        return {"logits": keras.ops.convert_to_numpy(model(images))}
    if format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        outputs = loaded.signatures["serving_default"](images=tf.constant(images))
        uint8 = loaded.signatures["serving_uint8"](
            images=tf.constant(images.astype("uint8"))
        )
        result = {k: v.numpy() for k, v in outputs.items()}
        result.update({f"uint8_{k}": v.numpy() for k, v in uint8.items()})
        return result
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path)
        names = [output.name for output in session.get_outputs()]
        values = session.run(None, {"images": images})
        return dict(zip(names, values))
    if format == "tflite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=path)
        runner = interpreter.get_signature_runner("serving_default")
        # By name: the input is `images` and the outputs `logits` and
        # `probabilities`, as in the other formats.
        return {k: np.asarray(v) for k, v in runner(images=images).items()}
    raise ValueError(format)


def main(argv):
    images = np.load(argv[1])
    out_dir = argv[2]
    for spec in argv[3:]:
        format, path = spec.split("=", 1)
        for key, value in reload_and_predict(format, path, images).items():
            np.save(os.path.join(out_dir, f"{format}_{key}.npy"), value)


if __name__ == "__main__":
    main(sys.argv)

"""`keras_pcl.training.evaluation`: files that are not what their name says."""

import pytest

from keras_pcl import cli

pytestmark = pytest.mark.backend_independent  # File checks before any backend work.


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "an empty file (0 bytes"),
        (b"\x89HDF\r\n\x1a\n" + bytes(100), "an HDF5 file"),
        (b"PK\x03\x04" + bytes(100), "a damaged zip archive (104 bytes"),
        (b"hello\n", "not a zip archive (6 bytes, beginning b'hello\\n')"),
    ],
)
def test_a_keras_file_that_is_no_zip_is_reported_as_what_it_is(
    tmp_path, capsys, content, what
):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    assert cli.main(["evaluate", str(path), "--dataset=digits"]) == 1
    error = capsys.readouterr().err
    assert "`network` is not a Keras model file: a .keras file is a zip" in error
    assert what in error and "File not found" not in error, error
    out = str(tmp_path / "out.keras")
    assert cli.main(["export", str(path), out, "--format=keras"]) == 1
    error = capsys.readouterr().err
    assert "`checkpoint` is not a Keras model file" in error
    assert what in error and "File not found" not in error, error

"""The embedded example the README's first command builds."""
import numpy as np
import pytest

from discomkd.data import load_data_folder
from discomkd.errors import DataError
from make_example import make_digits_example


def test_example_is_a_valid_two_modality_folder(tmp_path):
    make_digits_example(str(tmp_path))
    data = load_data_folder(str(tmp_path), "IMAGE", "PROJ")
    assert [m.sample_shape for m in data.modalities] == [(1, 24, 24), (32,)]
    assert [m.encoder for m in data.modalities] == ["resnet18", "mlp"]
    assert data.classes.tolist() == list(range(10))
    sizes = {split: len(rows) for split, rows in data.modalities[0].splits.items()}
    assert sizes == {"train": 1259, "valid": 179, "test": 359}  # stratified 70/10/20 of 1,797 digits
    image = np.load(tmp_path / "IMAGE_data_normalized.npy")
    assert abs(float(image.mean())) < 0.05 and 1.0 < float(image.std()) < 1.3  # standardised, plus noise


def test_example_is_reproducible_and_never_overwrites(tmp_path):
    make_digits_example(str(tmp_path / "a"))
    make_digits_example(str(tmp_path / "b"))
    for name in ("IMAGE_data_normalized", "PROJ_data_normalized", "labels", "train_idx"):
        assert np.array_equal(np.load(tmp_path / "a" / f"{name}.npy"), np.load(tmp_path / "b" / f"{name}.npy"))
    with pytest.raises(DataError, match="exists"):
        make_digits_example(str(tmp_path / "a"))

"""prepare_data.py on generated image folders, and predict.py on the raw files it read."""
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import folder_snapshot

from discomkd.data import load_data_folder
from discomkd.image_folders import channel_moments, combine_moments, read_sample
from predict import main as predict_main
from prepare_data import main as prepare_main

Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")

CLASSES = ("cat", "dog", "owl")
SIZE = 16  # ResNet-18 reads images of at least 8 pixels a side


def write_image(path, pixels):
    """PNG/JPG via Pillow (HW or HWC uint8, HW uint16), TIFF via tifffile, .npy as is."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".tif"):
        # band-interleaved (H, W, C) and band-sequential (C, H, W) TIFFs must read the same way
        planar = "separate" if pixels.shape[0] < pixels.shape[-1] else "contig"
        tifffile.imwrite(path, pixels, photometric="minisblack", planarconfig=planar)
    elif path.endswith(".npy"):
        np.save(path, pixels)
    else:
        Image.fromarray(pixels).save(path)


def rgb_pixels(rng, label):
    """(H, W, 3) uint8 whose brightness depends on the class, so the classes are learnable."""
    base = 60 + 60 * label
    return np.clip(base + rng.integers(-40, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def ms_pixels(rng, label, bands=5):
    """5-band uint16, band-interleaved (H, W, C) for even labels, band-sequential (C, H, W) for odd."""
    pixels = (1000 * (label + 1) + rng.integers(0, 3000, (SIZE, SIZE, bands))).astype(np.uint16)
    return pixels if label % 2 == 0 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def make_folders(root, per_class=9, rgb_extension=".png"):
    """RGB PNG and 5-band TIFF folders, fully paired: root/rgb/<class>/s<i>.png, root/ms/<class>/s<i>.tif."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            write_image(os.path.join(root, "rgb", name, f"s{i}{rgb_extension}"), rgb_pixels(rng, label))
            write_image(os.path.join(root, "ms", name, f"s{i}.tif"), ms_pixels(rng, label))
    return os.path.join(root, "rgb"), os.path.join(root, "ms")


def prepare(tmp_path, *options):
    return prepare_main([str(tmp_path / "out"), "--modality", f"RGB={tmp_path / 'rgb'}",
                         "--modality", f"MS={tmp_path / 'ms'}", *options])


def raw_stack(paths):
    return np.stack([read_sample(p).astype(np.float64) for p in paths])


def sample_paths(root, folder):
    """Files of root/folder/<class>/<file> in the prepared row order (class, then stem)."""
    return {f"{c}/{os.path.splitext(f)[0]}": os.path.join(root, folder, c, f)
            for c in sorted(os.listdir(os.path.join(root, folder))) for f in os.listdir(os.path.join(root, folder, c))}


def test_reads_each_format_as_channels_first(tmp_path):
    rng = np.random.default_rng(1)
    rgb, gray16, ms = rgb_pixels(rng, 0), rng.integers(0, 65535, (SIZE, SIZE), dtype=np.uint16), ms_pixels(rng, 1)
    for name, pixels in (("a.png", rgb), ("b.png", gray16), ("c.tif", ms), ("d.tif", ms_pixels(rng, 0)),
                         ("e.npy", rgb.transpose(2, 0, 1))):
        write_image(str(tmp_path / name), pixels)
    assert np.array_equal(read_sample(str(tmp_path / "a.png")), rgb.transpose(2, 0, 1))
    gray = read_sample(str(tmp_path / "b.png"))
    assert gray.shape == (1, SIZE, SIZE) and np.array_equal(gray[0].astype(np.int64), gray16)  # 16 bits kept
    assert read_sample(str(tmp_path / "c.tif")).dtype == np.uint16
    assert np.array_equal(read_sample(str(tmp_path / "c.tif")), ms)  # band-sequential: as stored
    assert read_sample(str(tmp_path / "d.tif")).shape == (5, SIZE, SIZE)  # band-interleaved: bands first
    assert np.array_equal(read_sample(str(tmp_path / "e.npy")), rgb.transpose(2, 0, 1))


def test_paired_folders_become_a_normalised_data_folder(tmp_path, capsys):
    make_folders(tmp_path)
    assert prepare(tmp_path) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr()
    assert "27 rows: 27 paired" in printed.out and printed.err == ""
    data = load_data_folder(str(out), "RGB", "MS")
    assert data.warnings == []
    assert json.loads((out / "classes.json").read_text()) == list(CLASSES)
    assert data.metadata["MS"]["class_names"] == list(CLASSES)
    assert [m.sample_shape for m in data.modalities] == [(3, SIZE, SIZE), (5, SIZE, SIZE)]
    assert not list(out.glob("train_idx_*.npy"))  # fully paired: one training split
    labels = np.load(out / "labels.npy")
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [9, 9, 9]

    normalization = json.loads((out / "normalization.json").read_text())["modalities"]
    train = np.load(out / "train_idx.npy")
    for name, folder in (("RGB", "rgb"), ("MS", "ms")):
        paths = list(sample_paths(tmp_path, folder).values())
        paths.sort(key=lambda p: (os.path.basename(os.path.dirname(p)), os.path.splitext(os.path.basename(p))[0]))
        raw = raw_stack(paths)  # (N, C, H, W) in the prepared row order
        mean, std = raw[train].mean(axis=(0, 2, 3)), raw[train].std(axis=(0, 2, 3))
        assert np.allclose(normalization[name]["mean"], mean, rtol=1e-12)
        assert np.allclose(normalization[name]["std"], std, rtol=1e-12)
        stored = np.load(out / f"{name}_data_normalized.npy")
        assert stored.dtype == np.float32
        assert np.allclose(stored, (raw - mean[:, None, None]) / std[:, None, None], atol=1e-5)
        # the statistics are the training rows' alone: the whole set's differ
        assert not np.allclose(normalization[name]["mean"], raw.mean(axis=(0, 2, 3)), rtol=1e-6)


def test_moments_combine_to_numpys_statistics():
    rng = np.random.default_rng(2)
    samples = rng.normal(500, 80, (7, 3, 5, 4))
    moments = [channel_moments(s) for s in samples]
    mean, std = combine_moments(np.stack([m[0] for m in moments]), np.stack([m[1] for m in moments]), 20)
    assert np.allclose(mean, samples.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert np.allclose(std, samples.std(axis=(0, 2, 3)), rtol=1e-12)


def test_partial_pairing_keeps_unpaired_samples_for_their_own_modality(tmp_path, capsys):
    make_folders(tmp_path, rgb_extension=".jpg")
    rng = np.random.default_rng(3)
    os.remove(tmp_path / "ms" / "cat" / "s0.tif")  # cat/s0: RGB only
    os.remove(tmp_path / "rgb" / "dog" / "s1.jpg")  # dog/s1: MS only
    for i in range(4):  # a class that only RGB has
        write_image(str(tmp_path / "rgb" / "yak" / f"y{i}.jpg"), rgb_pixels(rng, 2))
    assert prepare(tmp_path) == 0
    assert capsys.readouterr().err == ""
    out = tmp_path / "out"
    data = load_data_folder(str(out), "RGB", "MS")
    assert data.warnings == []
    assert data.classes.tolist() == [0, 1, 2, 3] and data.metadata["RGB"]["class_names"] == [*CLASSES, "yak"]
    ids = sorted([f"{c}/s{i}" for c in CLASSES for i in range(9)] + [f"yak/y{i}" for i in range(4)])
    rgb_only = [ids.index("cat/s0")] + [ids.index(f"yak/y{i}") for i in range(4)]
    ms_only = [ids.index("dog/s1")]
    rgb, ms = data.modalities
    assert set(rgb_only) <= set(rgb.splits["train"]) and not set(rgb_only) & set(ms.splits["train"])
    assert set(ms_only) <= set(ms.splits["train"]) and not set(ms_only) & set(rgb.splits["train"])
    for split in ("valid", "test"):  # evaluated on both modalities: paired rows only
        assert not set(rgb.splits[split]) & set(rgb_only + ms_only)
    assert np.all(ms.array[rgb_only] == 0) and np.all(rgb.array[ms_only] == 0)
    # RGB's statistics come from its own training rows, unpaired ones included
    paths = sample_paths(tmp_path, "rgb")
    raw = raw_stack([paths[ids[row]] for row in rgb.splits["train"]])
    preprocessing = json.loads((out / "normalization.json").read_text())["modalities"]["RGB"]
    assert np.allclose(preprocessing["mean"], raw.mean(axis=(0, 2, 3)), rtol=1e-12)


def test_bad_files_are_refused_in_one_line_or_skipped_and_listed(tmp_path, capsys):
    make_folders(tmp_path)
    corrupt = tmp_path / "rgb" / "dog" / "s2.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])  # a truncated PNG
    wrong = tmp_path / "ms" / "owl" / "s3.tif"
    write_image(str(wrong), np.zeros((SIZE, SIZE + 2, 5), dtype=np.uint16))
    before = folder_snapshot(tmp_path)
    assert prepare(tmp_path) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {corrupt}: not a readable image")
    assert "and 1 more bad files" in error
    assert folder_snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folder left

    assert prepare(tmp_path, "--skip-bad") == 0
    printed = capsys.readouterr().out
    assert "skipped 2" in printed
    skipped = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert skipped[0].startswith(f"{corrupt}: not a readable image")
    assert skipped[1] == f"{wrong}: size 16x18 (HxW), expected 16x16 (as 26 other MS files); pass --resize MS=16x16 to resize"
    data = load_data_folder(str(tmp_path / "out"), "RGB", "MS")
    assert len(data.labels) == 27 and data.warnings == []  # each bad file's row lives on in the other modality

    # an existing output is refused unless --overwrite, and then replaced
    assert prepare(tmp_path, "--skip-bad") == 2
    assert "already holds files" in capsys.readouterr().err
    assert prepare(tmp_path, "--skip-bad", "--overwrite", "--resize", "MS=12x12") == 0
    assert load_data_folder(str(tmp_path / "out"), "RGB", "MS").modalities[1].sample_shape == (5, 12, 12)


def test_resize_is_bilinear_antialiased(tmp_path):
    make_folders(tmp_path, per_class=4)
    write_image(str(tmp_path / "ms" / "cat" / "s0.tif"), ms_pixels(np.random.default_rng(4), 0)[:12, :10])
    assert prepare(tmp_path, "--resize", "MS=8x8") == 0
    out = tmp_path / "out"
    preprocessing = json.loads((out / "normalization.json").read_text())["modalities"]["MS"]
    assert preprocessing["resize"] == [8, 8] and preprocessing["source_dtypes"] == ["uint16"]
    raw = torch.from_numpy(read_sample(str(tmp_path / "ms" / "cat" / "s0.tif")).astype(np.float32))[None]
    expected = F.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    mean, std = (np.array(preprocessing[k])[:, None, None] for k in ("mean", "std"))
    assert np.allclose(np.load(out / "MS_data_normalized.npy")[0], (expected - mean) / std, atol=1e-5)


def test_manifest_with_the_users_split_and_npy_samples(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for i in range(12):
        label = CLASSES[i % 3]
        np.save(tmp_path / f"a{i}.npy", rng.normal(size=(2, SIZE, SIZE)).astype(np.float32))
        np.save(tmp_path / f"b{i}.npy", rng.normal(size=(SIZE, SIZE)))
        split = "test" if i < 3 else "valid" if i < 6 else "train"
        rows.append([f"id{i}", label, f"a{i}.npy", "" if i == 11 else f"b{i}.npy", split])
    with open(tmp_path / "samples.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "label", "SAR", "DEPTH", "split"], *rows])
    assert prepare_main([str(tmp_path / "out"), "--manifest", str(tmp_path / "samples.csv")]) == 0
    data = load_data_folder(str(tmp_path / "out"), "SAR", "DEPTH")
    sar, depth = data.modalities
    assert sar.splits["test"].tolist() == [0, 1, 2] and sar.splits["valid"].tolist() == [3, 4, 5]
    assert sar.splits["train"].tolist() == list(range(6, 12)) and depth.splits["train"].tolist() == list(range(6, 11))
    assert depth.sample_shape == (1, SIZE, SIZE) and data.warnings == []


def test_missing_reader_is_one_line_with_the_install_command(tmp_path, capsys, monkeypatch):
    make_folders(tmp_path, per_class=3)
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import tifffile now raises ImportError
    assert prepare(tmp_path) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.endswith("needs tifffile: pip install tifffile\n")


@pytest.mark.parametrize("fractions", [["0.9", "0.1", "0"], ["nan", "0.5", "0.5"], ["0.8", "0.3", "-0.1"]])
def test_fractions_are_refused_as_make_splits_refuses_them(tmp_path, capsys, fractions):
    """A zero or NaN fraction would leave a split empty: refused in one line before any file is read."""
    make_folders(tmp_path, per_class=3)
    before = folder_snapshot(tmp_path)
    assert prepare(tmp_path, "--fractions", *fractions) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: --fractions ") and "positive" in error
    assert folder_snapshot(tmp_path) == before


def test_training_and_prediction_on_the_raw_files(tmp_path, capsys, cli_main):
    make_folders(tmp_path)
    assert prepare(tmp_path) == 0
    out = tmp_path / "out"
    run = tmp_path / "run"
    capsys.readouterr()
    assert cli_main([str(out), "RGB", "MS", "--epochs", "1", "--batch-size", "8", "--output", str(run),
                     "--augment-first", "none", "--augment-second", "none", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err

    # the test rows' raw MS files, copied in test_idx order
    ids = sorted(sample_paths(tmp_path, "ms"))
    raw = tmp_path / "raw_test"
    raw.mkdir()
    for position, row in enumerate(np.load(out / "test_idx.npy")):
        shutil.copy(sample_paths(tmp_path, "ms")[ids[row]], raw / f"{position:03d}.tif")
    assert predict_main([str(run / "best_MS.pt"), str(raw)]) == 0
    printed = capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "raw_test_pred_classes.npy"), np.load(run / "test_predictions_MS.npy"))
    names = [row["name"] for row in csv.DictReader(open(tmp_path / "raw_test_pred_predictions.csv"))]
    assert names == [CLASSES[v] for v in np.load(run / "test_predictions_MS.npy")]
    assert f"{raw / '000.tif'}: {names[0]}" in printed
    # the same probabilities as predicting the prepared rows
    assert predict_main([str(run / "best_MS.pt"), str(out / "MS_data_normalized.npy"), "--rows",
                         str(out / "test_idx.npy"), "--output", str(tmp_path / "rows")]) == 0
    assert np.allclose(np.load(tmp_path / "raw_test_pred_probabilities.npy"),
                       np.load(tmp_path / "rows_probabilities.npy"), atol=1e-6)

    # a checkpoint without recorded normalisation refuses raw files
    checkpoint = torch.load(run / "best_MS.pt", weights_only=True)
    del checkpoint["preprocessing"]
    torch.save(checkpoint, tmp_path / "bare.pt")
    capsys.readouterr()
    assert predict_main([str(tmp_path / "bare.pt"), str(raw), "--output", str(tmp_path / "bare")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no normalisation recorded" in error

"""prepare_data.py on generated image folders, and predict.py on the raw files it read."""
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import ROOT, folder_snapshot, refused, write_sample_folders

from discomkd.commands import make_splits
from discomkd.commands.predict import main as predict_main
from discomkd.commands.prepare import main as prepare_main
from discomkd.data.folder import load_data_folder
from discomkd.preparing.samples import channel_moments, combine_moments, read_sample

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


def make_folders(root, per_class=9, rgb_extension=".png", classes=CLASSES):
    """RGB PNG and 5-band TIFF folders, fully paired: root/rgb/<class>/s<i>.png, root/ms/<class>/s<i>.tif."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
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


@pytest.mark.parametrize("fractions", [["0.9", "0.1", "0"], ["nan", "0.5", "0.5"], ["0.8", "0.3", "-0.1"],
                                       ["1", "0", "0"], ["nan", "nan", "nan"]])
def test_fractions_are_refused_as_make_splits_refuses_them(tmp_path, capsys, fractions):
    """A zero or NaN fraction would leave a split empty: refused in one line before any file is read."""
    make_folders(tmp_path, per_class=3)
    before = folder_snapshot(tmp_path)
    assert prepare(tmp_path, "--fractions", *fractions) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: --fractions ") and "positive" in error
    assert folder_snapshot(tmp_path) == before
    # one rule (splits.check_fractions): make_splits.py refuses them in the same words
    (tmp_path / "split").mkdir()
    np.save(tmp_path / "split" / "labels.npy", np.repeat(np.arange(3), 10))
    assert make_splits.main([str(tmp_path / "split"), "--fractions", *fractions]) == 2
    assert capsys.readouterr().err == error


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
    (raw / ".ipynb_checkpoints").mkdir()  # a hidden folder: skipped, as prepare_data.py skips it
    shutil.copy(raw / "000.tif", raw / ".ipynb_checkpoints" / "000-checkpoint.tif")
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


def read_rows_csv(folder) -> list[dict]:
    with open(os.path.join(folder, "rows.csv"), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_rows_csv_records_each_rows_identity(tmp_path):
    make_folders(tmp_path, per_class=4)
    os.remove(tmp_path / "ms" / "dog" / "s1.tif")  # dog/s1: an RGB training row of its own
    assert prepare(tmp_path) == 0
    out = tmp_path / "out"
    lines = read_rows_csv(out)
    ids = sorted(sample_paths(tmp_path, "rgb"))
    assert [line["id"] for line in lines] == ids and [line["row"] for line in lines] == [str(i) for i in range(12)]
    labels = np.load(out / "labels.npy")
    assert [int(line["label"]) for line in lines] == labels.tolist()
    assert [line["class"] for line in lines] == [CLASSES[v] for v in labels]
    split = {int(row): name for name in ("train", "valid", "test") for row in np.load(out / f"{name}_idx.npy")}
    split[ids.index("dog/s1")] = "train"
    assert [line["split"] for line in lines] == [split[row] for row in range(12)]
    for line in lines:
        for name, folder in (("RGB", "rgb"), ("MS", "ms")):
            path = sample_paths(tmp_path, folder).get(line["id"])
            assert line[name] == (os.path.abspath(path) if path else "")
            assert line[f"{name}_sha256"] == (hashlib.sha256(open(path, "rb").read()).hexdigest() if path else "")


def test_raw_files_are_matched_to_their_rows_by_identity(tmp_path, capsys, cli_main):
    """With classes `a`, `a b` and `b`, the sorted paths put "a b/..." before "a/..." while the rows go by (class,
    stem), and unpaired files shift positions too: --rows and --labels on the raw folder must score the rows they
    score on the prepared array (the same probabilities), through rows.csv."""
    make_folders(tmp_path, classes=("a", "a b", "b"))
    os.remove(tmp_path / "rgb" / "a" / "s0.png")  # a/s0: an MS-only row
    os.remove(tmp_path / "ms" / "a b" / "s1.tif")  # a b/s1: a row without an MS file
    assert prepare(tmp_path) == 0
    out, run = tmp_path / "out", tmp_path / "run"
    assert cli_main([str(out), "RGB", "MS", "--epochs", "2", "--batch-size", "8", "--output", str(run),
                     "--encoder-first", "lenet", "--encoder-second", "lenet", "--augment-first", "none",
                     "--augment-second", "none", "--quiet"]) == 0
    checkpoint, test_rows = str(run / "best_MS.pt"), np.load(out / "test_idx.npy")
    scoring = ["--rows", str(out / "test_idx.npy"), "--labels", str(out / "labels.npy")]
    capsys.readouterr()
    assert predict_main([checkpoint, str(out / "MS_data_normalized.npy"), *scoring, "--output", str(tmp_path / "npy")]) == 0
    from_array = capsys.readouterr().out
    assert predict_main([checkpoint, str(tmp_path / "ms"), *scoring, "--output", str(tmp_path / "raw")]) == 0
    from_raw = capsys.readouterr().out
    assert re.search(r"weighted F1 .*", from_raw).group(0) == re.search(r"weighted F1 .*", from_array).group(0)
    np.testing.assert_allclose(np.load(tmp_path / "raw_probabilities.npy"), np.load(tmp_path / "npy_probabilities.npy"),
                               atol=1e-6)
    lines = read_rows_csv(out)
    listed = [line["input"] for line in csv.DictReader(open(tmp_path / "raw_predictions.csv"))]
    assert listed == [lines[row]["MS"] for row in test_rows]  # each test row's own file

    # --labels alone: every file gets its own row's label
    assert predict_main([checkpoint, str(tmp_path / "ms"), "--labels", str(out / "labels.npy"),
                         "--output", str(tmp_path / "all")]) == 0
    row_of = {line["MS"]: int(line["row"]) for line in lines if line["MS"]}
    files = [line["input"] for line in csv.DictReader(open(tmp_path / "all_predictions.csv"))]
    truth = np.load(out / "labels.npy")[[row_of[f] for f in files]]
    assert len(files) == 26 and f"accuracy {np.mean(np.load(tmp_path / 'all_classes.npy') == truth):.4f}" \
        in capsys.readouterr().out

    # a row without an MS file, a folder without rows.csv, another preparation's rows: refused in one line
    np.save(tmp_path / "no_ms.npy", np.array([[line["id"] for line in lines].index("a b/s1")]))
    shutil.copy(out / "rows.csv", tmp_path / "rows.csv")  # the record found beside no_ms.npy
    shutil.copy(out / "normalization.json", tmp_path / "normalization.json")
    bare = shutil.copytree(out, tmp_path / "bare", ignore=shutil.ignore_patterns("rows.csv", "run"))
    assert prepare_main([str(tmp_path / "other"), "--modality", f"RGB={tmp_path / 'rgb'}", "--modality",
                         f"MS={tmp_path / 'ms'}", "--seed", "1"]) == 0
    capsys.readouterr()
    for rows, expected in ((tmp_path / "no_ms.npy", (str(tmp_path / "no_ms.npy"), "has no MS file")),
                           (f"{bare}/test_idx.npy", (f"{bare}/test_idx.npy", "needs the rows.csv")),
                           (tmp_path / "other" / "test_idx.npy", (str(tmp_path / "other" / "rows.csv"),
                                                                  "differs from the statistics"))):
        before = folder_snapshot(tmp_path)
        refused(predict_main([checkpoint, str(tmp_path / "ms"), "--rows", str(rows), "--output", str(tmp_path / "x")]),
                capsys, before, folder_snapshot(tmp_path), *expected)


@pytest.mark.parametrize("value", [1e300, -1.797e308])  # an overflow; GDAL's float64 nodata
def test_a_float64_overflow_is_refused_naming_the_file_and_channel(tmp_path, capsys, value):
    folders = write_sample_folders(tmp_path / "in")
    path = os.path.join(folders["A"], "c1", "s2.npy")
    sample = np.load(path).astype(np.float64)
    sample[1, 3, 4] = value
    np.save(path, sample)
    argv = [str(tmp_path / "out"), "--modality", f"A={folders['A']}", "--modality", f"B={folders['B']}"]
    before = folder_snapshot(tmp_path)
    refused(prepare_main(argv), capsys, before, folder_snapshot(tmp_path), f"error: {path}: channel 1: ",
            "overflow the statistics")
    # left out, the statistics are finite and normalization.json is strict JSON (no Infinity, no NaN)
    assert prepare_main([*argv, "--skip-bad"]) == 0

    def not_json(constant):
        raise ValueError(f"{constant} in normalization.json")

    entries = json.loads((tmp_path / "out" / "normalization.json").read_text(), parse_constant=not_json)
    assert all(np.isfinite(entries["modalities"]["A"][key]).all() for key in ("mean", "std"))
    assert np.isfinite(np.load(tmp_path / "out" / "A_data_normalized.npy")).all()


def test_statistics_that_overflow_only_when_combined_are_refused(tmp_path, capsys):
    """Each file constant (its own spread 0), the files 1e160 apart: their combined variance overflows."""
    folders = write_sample_folders(tmp_path / "in")
    for label, name in enumerate(("c0", "c1", "c2")):
        for i in range(6):
            path = os.path.join(folders["A"], name, f"s{i}.npy")
            sample = np.load(path).astype(np.float64)
            sample[0] = (label - 1) * 1e160 + i
            np.save(path, sample)
    before = folder_snapshot(tmp_path)
    refused(prepare_main([str(tmp_path / "out"), "--modality", f"A={folders['A']}", "--modality", f"B={folders['B']}"]),
            capsys, before, folder_snapshot(tmp_path), "channel 0: values too large for the statistics")


def test_the_same_sample_twice_is_refused_or_kept_once(tmp_path, capsys):
    folders = write_sample_folders(tmp_path / "in")
    first = os.path.join(folders["A"], "c0", "s0.npy")
    link = os.path.join(folders["A"], "c1", "link.npy")  # folder mode: a symbolic link to another sample
    os.symlink(first, link)
    copy = os.path.join(folders["A"], "c2", "s9.npy")  # and a copy of one
    shutil.copy(os.path.join(folders["A"], "c2", "s1.npy"), copy)
    argv = [str(tmp_path / "out"), "--modality", f"A={folders['A']}", "--modality", f"B={folders['B']}"]
    before = folder_snapshot(tmp_path)
    refused(prepare_main(argv), capsys, before, folder_snapshot(tmp_path),
            f"error: {link}: the same file as {first}", "and 1 more bad files")
    assert prepare_main([*argv, "--skip-bad"]) == 0  # the first of each kept, the other listed
    assert (tmp_path / "out" / "skipped.txt").read_text().splitlines() == [
        f"{link}: the same file as {first} (one sample twice)",
        f"{copy}: the same pixels as {os.path.join(folders['A'], 'c2', 's1.npy')} (one sample twice)"]
    assert len(np.load(tmp_path / "out" / "labels.npy")) == 18
    capsys.readouterr()

    # a manifest: two rows of the same files, one in training and one in test
    manifest = tmp_path / "samples.csv"
    rows = [[f"id{i}", f"c{i % 3}", f"in/a/c{i % 3}/s{i // 3}.npy", f"in/b/c{i % 3}/s{i // 3}.npy",
             "test" if i < 3 else "valid" if i < 6 else "train"] for i in range(18)]
    rows.append(["again", "c0", rows[0][2], rows[0][3], "train"])
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "label", "A", "B", "split"], *rows])
    before = folder_snapshot(tmp_path)
    refused(prepare_main([str(tmp_path / "m"), "--manifest", str(manifest)]), capsys, before,
            folder_snapshot(tmp_path), f"{tmp_path / rows[0][2]}: the same file as", "and 1 more")


def test_no_pairs_is_one_line_naming_the_cause(tmp_path, capsys):
    folders = write_sample_folders(tmp_path / "in")
    for root, _, names in os.walk(folders["B"]):  # depth files named x_d.npy: nothing pairs
        for name in names:
            os.rename(os.path.join(root, name), os.path.join(root, name.replace(".npy", "_d.npy")))
    before = folder_snapshot(tmp_path)
    refused(prepare_main([str(tmp_path / "out"), "--modality", f"A={folders['A']}", "--modality", f"B={folders['B']}"]),
            capsys, before, folder_snapshot(tmp_path), "0 samples are paired", "file stem")


@pytest.mark.parametrize("option, named", [(["--seed", "-1"], "--seed -1"), (["--seed", "4294967296"], "--seed"),
                                           (["--resize", "A=100000x100000"], "--resize A=100000x100000"),
                                           (["--resize", "A=0x8"], "--resize A=0x8")])
def test_options_numpy_or_the_allocator_cannot_take_are_refused(tmp_path, capsys, option, named):
    folders = write_sample_folders(tmp_path / "in")
    before = folder_snapshot(tmp_path)
    refused(prepare_main([str(tmp_path / "out"), "--modality", f"A={folders['A']}", "--modality", f"B={folders['B']}",
                          *option]), capsys, before, folder_snapshot(tmp_path), named)


@pytest.mark.parametrize("classes, order", [(("--5", "5", "-3"), ["--5", "-3", "5"]),
                                            (("10", "9", "-2"), ["-2", "9", "10"]),
                                            (("1", "²", "3"), ["1", "3", "²"])])
def test_class_names_that_look_like_integers(tmp_path, classes, order):
    """Numeric order only for ASCII integers: '--5' and '²' are names ('²'.isdigit() is True, int('²') fails)."""
    folders = write_sample_folders(tmp_path / "in", classes=classes)
    assert prepare_main([str(tmp_path / "out"), "--modality", f"A={folders['A']}", "--modality",
                         f"B={folders['B']}"]) == 0
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == order


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM, which would otherwise stick to the first column's name."""
    write_sample_folders(tmp_path / "in")
    with open(tmp_path / "samples.csv", "w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle).writerows([["id", "label", "A", "B"]] + [
            [f"id{i}", f"c{i % 3}", f"in/a/c{i % 3}/s{i // 3}.npy", f"in/b/c{i % 3}/s{i // 3}.npy"] for i in range(18)])
    assert prepare_main([str(tmp_path / "out"), "--manifest", str(tmp_path / "samples.csv")]) == 0
    assert len(read_rows_csv(tmp_path / "out")) == 18


def test_mixed_bit_depths_in_one_modality_are_refused(tmp_path, capsys):
    """8-bit and 16-bit PNGs of one modality hold values on scales 257 times apart: refused, or left out."""
    make_folders(tmp_path, per_class=3)
    rng = np.random.default_rng(6)
    for label, name in enumerate(CLASSES):
        for i in range(3):
            write_image(str(tmp_path / "depth" / name / f"s{i}.png"),
                        rng.integers(0, 60000, (SIZE, SIZE)).astype(np.uint16))
    eight_bit = tmp_path / "depth" / "dog" / "s1.png"
    write_image(str(eight_bit), rng.integers(0, 255, (SIZE, SIZE)).astype(np.uint8))
    argv = [str(tmp_path / "out"), "--modality", f"RGB={tmp_path / 'rgb'}", "--modality", f"DEPTH={tmp_path / 'depth'}"]
    before = folder_snapshot(tmp_path)
    refused(prepare_main(argv), capsys, before, folder_snapshot(tmp_path),
            f"error: {eight_bit}: 8-bit integers (uint8), but 8 other DEPTH files hold 16-bit integers")


# ----------------------------------------------------------------------------- extreme values and re-encoded files
def prepare_process(cwd, *argv) -> subprocess.CompletedProcess:
    """prepare_data.py as typed, in its own process."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare_data.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def folders_with_one_extreme_value(root, value, dtype, extension=".tif"):
    """Two modalities of 3 classes x 6 samples (2, 8, 8) of varied values around 100; in modality A, one pixel
    of one sample is `value` (a nodata marker, say)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for label, class_name in enumerate(CLASSES):
            for i in range(6):
                pixels = (100 + 10 * rng.standard_normal((2, 8, 8)) + 5 * label).astype(dtype)
                if name == "a" and label == 1 and i == 3:
                    pixels[0, 2, 2] = value
                write_image(os.path.join(str(root), name, class_name, f"s{i}{extension}"), pixels)


@pytest.mark.parametrize("value, dtype, extension", [
    (-3.4028235e38, np.float32, ".tif"),  # GDAL's float32 nodata
    (1e30, np.float64, ".tif"), (1e100, np.float64, ".npy")])
def test_one_extreme_pixel_is_refused_and_nodata_fills_it(tmp_path, value, dtype, extension):
    """One pixel at a nodata value once flattened its whole channel (two distinct values left in the whole
    normalised array, exit 0): refused in one line naming the file and the value, nothing written; with
    --nodata A=VALUE it is left out of the statistics and filled, and the channel keeps its values."""
    folders_with_one_extreme_value(tmp_path, value, dtype, extension)
    before = folder_snapshot(tmp_path)
    refused = prepare_process(tmp_path, "out", "--modality", "A=a", "--modality", "B=b")
    assert refused.returncode == 2 and folder_snapshot(tmp_path) == before
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: {os.path.join('a', 'dog', 's3' + extension)}: channel 0: value ")
    assert "--nodata A=" in line
    filled = prepare_process(tmp_path, "out", "--modality", "A=a", "--modality", "B=b", "--nodata", f"A={value!r}")
    assert filled.returncode == 0, filled.stderr
    assert "A: nodata" in filled.stdout and "in 1 pixel(s) of 1 file(s)" in filled.stdout
    array = np.load(tmp_path / "out" / "A_data_normalized.npy")
    assert len(np.unique(array[:, 0])) > 1000 and np.abs(array).max() < 10  # the channel kept its values
    with open(tmp_path / "out" / "normalization.json") as handle:
        assert json.load(handle)["modalities"]["A"]["nodata"] == value


def test_a_channel_that_would_collapse_is_refused_whatever_the_cause(tmp_path):
    """A mask-like channel (mostly 0, some 1) with one 1e30: its typical spread is 0, so only the normalised
    values can tell that 0 and 1 would become one float32 value in every other file."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for label, class_name in enumerate(CLASSES):
            for i in range(6):
                pixels = (rng.random((1, 8, 8)) < 0.2 + 0.2 * label).astype(np.float64)
                if name == "a" and label == 1 and i == 3:
                    pixels[0, 2, 2] = 1e30
                write_image(os.path.join(str(tmp_path), name, class_name, f"s{i}.npy"), pixels)
    before = folder_snapshot(tmp_path)
    process = prepare_process(tmp_path, "out", "--modality", "A=a", "--modality", "B=b")
    assert process.returncode == 2 and folder_snapshot(tmp_path) == before
    assert "all normalise to one float32 value" in process.stderr and len(process.stderr.splitlines()) == 1


def test_a_file_saved_again_in_another_encoding_is_a_duplicate(tmp_path):
    """A PNG saved again at another compression level: other bytes, the same pixels; it once landed in
    training while its original was in validation."""
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        for class_name in CLASSES:
            for i in range(6):
                write_image(os.path.join(str(tmp_path), name, class_name, f"s{i}.png"),
                            rng.integers(0, 255, (8, 8), dtype=np.uint8))
    pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    for name in ("a", "b"):
        for index, level in enumerate((1, 9)):  # the same image, two zlib levels
            Image.fromarray(pixels if name == "a" else 255 - pixels).save(
                tmp_path / name / CLASSES[1] / f"again{index}.png", compress_level=level)
    first, second = (tmp_path / "a" / CLASSES[1] / "again0.png", tmp_path / "a" / CLASSES[1] / "again1.png")
    assert first.read_bytes() != second.read_bytes()
    process = prepare_process(tmp_path, "out", "--modality", "A=a", "--modality", "B=b")
    assert process.returncode == 2, process.stdout
    assert f"the same pixels as {os.path.join('a', CLASSES[1], 'again0.png')}" in process.stderr

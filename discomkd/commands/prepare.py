"""discomkd-prepare (prepare_data.py): folders of image files (two modalities) turned into a DisCoM-KD data folder.

    discomkd-prepare OUTPUT --modality RGB=photos --modality DEPTH=depth [--resize DEPTH=64x64]
    discomkd-prepare OUTPUT --manifest samples.csv

Each FOLDER is laid out FOLDER/<class>/<sample>.<ext> (PNG/JPG, TIFF with any number of bands, or
per-sample .npy); the two modalities' samples are paired by class and file stem. The manifest is a
CSV with columns id,label,<NAME1>,<NAME2>[,split]. Besides the arrays, labels and splits, OUTPUT gets
rows.csv, each row's identity (id, class, split, source files and their SHA-256), through which
predict.py matches raw files to rows. --overwrite replaces a folder this command wrote, and refuses
one holding anything else (a trained run). docs/data.md says more; discomkd/preparing/folders.py does
the work.
"""
from __future__ import annotations

import argparse
import math
import re
import sys

from discomkd.commands.entry import run_command
from discomkd.data.splits import DEFAULT_FRACTIONS, check_fractions
from discomkd.preparing.folders import check_name, list_class_folders, prepare, read_manifest
from discomkd.preparing.samples import MAX_RESIZE_SIDE, check_resize
from discomkd.utils.console import command_for
from discomkd.utils.errors import BadInput, OptionError
from discomkd.utils.seeds import seed_problem


def name_and_value(text: str, option: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not value:
        raise OptionError(f"{option} {text}: NAME=VALUE expected")
    return check_name(name, option), value


def parse_size(text: str, option: str) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", text)
    if not match:
        raise OptionError(f"{option} {text}: a size HxW (e.g. 64x64) expected")
    return int(match[1]), int(match[2])


def parse_number(text: str, option: str) -> float:
    """A finite number (a value pixels can equal: NaN equals nothing, and NaN or Inf pixels are refused anyway)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise OptionError(f"{option}: a finite number is expected")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Turn two modalities' image folders (or a CSV manifest) into a DisCoM-KD data folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("output", metavar="OUTPUT", help="the data folder to write (refused if it holds files, "
                                                         "unless --overwrite)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--modality", action="append", metavar="NAME=FOLDER",
                        help="a modality and its folder FOLDER/<class>/<sample>.<ext>; give it twice")
    source.add_argument("--manifest", metavar="CSV", help="columns id,label,<NAME1>,<NAME2>[,split]; paths relative "
                                                          "to the CSV's folder, empty where a modality is absent")
    parser.add_argument("--resize", action="append", default=[], metavar="NAME=HxW",
                        help="resize that modality's samples (bilinear, antialiased; at most "
                             f"{MAX_RESIZE_SIDE} pixels a side); without it every sample must have the same size")
    parser.add_argument("--nodata", action="append", default=[], metavar="NAME=VALUE",
                        help="that modality's missing-value marker (e.g. GDAL's -3.4028235e38): pixels equal to it "
                             "(in the file's own type) are left out of the statistics and filled with their file's "
                             "channel mean, here and in predict.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split (0 to 2**32-1)")
    parser.add_argument("--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS,
                        metavar=("TRAIN", "VALID", "TEST"),
                        help="split of the paired samples (the manifest's split column replaces it)")
    parser.add_argument("--skip-bad", action="store_true", help="leave unreadable or wrong-size files out, listed in "
                                                                "OUTPUT/skipped.txt, instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT written by prepare_data.py "
                                                                 "(refused while it holds anything else, such as runs)")
    return parser


def prepare_folder(args: argparse.Namespace) -> None:
    """Reads the inputs, writes the data folder and prints its summary; raises `DataError`."""
    check_fractions(args.fractions)  # the options before any input is read
    if seed_problem(args.seed):
        raise OptionError(seed_problem(args.seed))
    if args.manifest is not None:
        if not args.manifest:
            raise OptionError("--manifest '': an empty name; name the CSV manifest")
        table = read_manifest(args.manifest)
    else:
        folders = dict(name_and_value(text, "--modality") for text in args.modality)
        if len(args.modality) != 2 or len(folders) != 2:
            raise OptionError(f"--modality: two modalities with different names expected, got "
                            f"{' '.join(args.modality)}")
        table = list_class_folders(folders)
    sizes = {}
    for text in args.resize:
        name, value = name_and_value(text, "--resize")
        if name not in table.names:
            raise OptionError(f"--resize {text}: no modality {name}; the modalities are {', '.join(table.names)}")
        sizes[name] = check_resize(name, parse_size(value, "--resize"))
    nodata = {}
    for text in args.nodata:
        name, value = name_and_value(text, "--nodata")
        if name not in table.names:
            raise OptionError(f"--nodata {text}: no modality {name}; the modalities are {', '.join(table.names)}")
        if name in nodata:
            raise OptionError(f"--nodata {name}: given twice")
        nodata[name] = parse_number(value, f"--nodata {text}")
    summary = prepare(table, args.output, sizes, args.seed, tuple(args.fractions), args.skip_bad, args.overwrite,
                      nodata=nodata)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(describe(summary))


def describe(summary: dict) -> str:
    """The printed summary of a prepared folder."""
    names = list(summary["shapes"])
    splits = summary["splits"]
    lines = [f"{n}: {summary['present'][n]} files, samples {summary['shapes'][n]} from {'/'.join(summary['dtypes'][n])}"
             for n in names]
    paired = sum(summary["present"].values()) - summary["rows"]
    lines.append(f"{summary['rows']} rows: {paired} paired, "
                 + ", ".join(f"{summary['present'][n] - paired} {n} only" for n in names)
                 + f"; {len(summary['classes'])} classes: {', '.join(summary['classes'])}")
    lines.append(f"splits: train {splits['train']} paired"
                 + "".join(f" ({n}: {splits['train_' + n]})" for n in names if splits["train_" + n] != splits["train"])
                 + f", valid {splits['valid']}, test {splits['test']}")
    lines += summary["notes"]
    if summary["skipped"]:
        lines.append(f"skipped {len(summary['skipped'])} (listed in {summary['output']}/skipped.txt)")
    lines.append(f"wrote {summary['output']}; train with: {command_for('discomkd.commands.train')} {summary['output']} "
                 f"{' '.join(names)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, lambda line: prepare_folder(argparse.Namespace(**line.options)),
                       (BadInput, OSError))



if __name__ == "__main__":
    raise SystemExit(main())

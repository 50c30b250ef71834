"""``difflab lpips`` and ``difflab lpips-eval`` end to end, and their bad input as one sentence."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from PIL import Image

from tests.cli.conftest import run_cli
from tests.metrics.test_lpips import (
    EXAMPLES,
)
from tests.metrics.test_lpips_bapps import write_2afc_set, write_jnd_set


def test_two_images_and_a_spatial_map(tmp_path, capsys):
    out_map = tmp_path / "map.png"
    code, out, _ = run_cli(
        [
            "lpips",
            str(EXAMPLES / "ex_ref.png"),
            str(EXAMPLES / "ex_p0.png"),
            "--spatial",
            str(out_map),
        ],
        capsys,
    )
    assert code == 0
    assert "LPIPS alex-lin v0.1: 0.7219" in out
    with Image.open(out_map) as image:
        assert image.size == (64, 64) and image.mode == "L"
    code, out, _ = run_cli(
        ["lpips", str(EXAMPLES / "ex_ref.png"), str(EXAMPLES / "ex_p1.png"), "--net", "vgg"], capsys
    )
    assert code == 0 and "LPIPS vgg-lin v0.1: 0.4217" in out


def test_corresponding_files_in_two_folders(tmp_path, capsys):
    dir0, dir1 = tmp_path / "a", tmp_path / "b"
    for folder in (dir0, dir1):
        folder.mkdir()
    for name, distorted in (("x.png", "ex_p0.png"), ("y.png", "ex_p1.png")):
        shutil.copy(EXAMPLES / "ex_ref.png", dir0 / name)
        shutil.copy(EXAMPLES / distorted, dir1 / name)
    out_csv = tmp_path / "dists.csv"
    code, out, _ = run_cli(
        ["lpips", "--dir0", str(dir0), "--dir1", str(dir1), "--out", str(out_csv)], capsys
    )
    assert code == 0 and "2 corresponding pairs" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["file0"].endswith("x.png"), round(float(r["distance"]), 3)) for r in rows] == [
        (True, 0.722),
        (False, 0.138),
    ]


def test_all_pairs_of_a_folder(tmp_path, capsys):
    code, out, _ = run_cli(["lpips", "--all-pairs", str(EXAMPLES), "--batch-size", "2"], capsys)
    assert code == 0 and "3 pairs" in out
    lines = [line.split("\t") for line in out.splitlines() if "\t" in line]
    distances = {frozenset(line[:2]): float(line[2]) for line in lines}
    assert distances[frozenset({"ex_ref.png", "ex_p0.png"})] == pytest.approx(0.7219, abs=1e-4)
    assert distances[frozenset({"ex_ref.png", "ex_p1.png"})] == pytest.approx(0.1376, abs=1e-4)


def test_lpips_eval_on_bapps_layout_folders(tmp_path, capsys):
    write_2afc_set(tmp_path / "2afc" / "val" / "blur")
    out_json = tmp_path / "scores.json"
    code, out, _ = run_cli(
        ["lpips-eval", "--mode", "2afc", "--root", str(tmp_path / "2afc"), "--out", str(out_json)],
        capsys,
    )
    assert code == 0 and "val/blur" in out and "80.0" in out and "alex-lin 69.8" in out
    assert json.loads(out_json.read_text())["sets"][0]["score"] == pytest.approx(0.8)
    write_jnd_set(tmp_path / "jnd")
    code, out, _ = run_cli(["lpips-eval", "--mode", "jnd", "--root", str(tmp_path / "jnd")], capsys)
    assert code == 0 and "100.0" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lpips"], "give two image files, or --dir0 A --dir1 B, or --all-pairs DIR"),
        (["lpips", "{ref}"], "exactly two image files"),
        (["lpips", "{ref}", "{readme}"], "cannot be read as an image"),
        (["lpips", "{ref}", "{big}"], "LPIPS compares images of the same size"),
        (["lpips", "{ref}", "{ref}", "--spatial", "{tmp}/map.jpg"], "must end in .png"),
        (["lpips", "--dir0", "{examples}"], "give both --dir0 and --dir1"),
        (["lpips", "--dir0", "{examples}", "--dir1", "{tmp}/empty"], "holds no image files"),
        (["lpips", "--dir0", "{examples}", "--dir1", "{tmp}"], "lacks 3 file(s) of --dir0"),
        (["lpips", "--all-pairs", "{examples}", "--spatial", "{tmp}/m.png"], "--spatial needs two"),
        (["lpips", "--net", "squeeze", "{ref}", "{ref}"], "no pretrained squeeze weights"),
        (["lpips", "--batch-size", "0", "--all-pairs", "{examples}"], "at least 1"),
        (["lpips-eval", "--mode", "2afc", "--root", "{tmp}"], "holds no BAPPS 2afc folder"),
        (["lpips", "--device", "tpu9", "{ref}", "{ref}"], "is not a torch device"),
    ],
)
def test_bad_input_is_one_sentence(args, message, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("RGB", (96, 96)).save(big)
    (tmp_path / "empty").mkdir()
    values = {
        "ref": EXAMPLES / "ex_ref.png",
        "readme": EXAMPLES / "README.md",
        "big": big,
        "examples": EXAMPLES,
        "tmp": tmp_path,
    }
    code, _, err = run_cli([a.format(**values) for a in args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

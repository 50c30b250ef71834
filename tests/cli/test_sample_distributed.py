"""``difflab sample`` under torchrun: each rank draws its share of --n, rank 0 writes them all."""

from PIL import Image

from tests.cli.conftest import run_cli
from tests.helpers import torchrun


def test_two_processes_share_the_samples_and_rank_0_writes_one_grid(
    tiny_checkpoint, tmp_path, capsys
):
    two, one = tmp_path / "two", tmp_path / "one"
    args = ["--steps", "2", "--seed", "5"]
    result = torchrun(
        2,
        "sample",
        str(tiny_checkpoint),
        "--num-samples",  # torchrun's parser would take --n for its own --nnodes etc.
        "5",
        "--out",
        str(two / "grid.png"),
        "--out-dir",
        str(two),
        *args,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote 5 samples") == 1 and "on 2 processes" in result.stdout
    singles = sorted(two.glob("sample_*.png"))
    assert len(singles) == 5 and (two / "grid.png").exists()
    # rank 0 draws the first 3 with --seed itself: a single process gives the same images
    code, _, err = run_cli(
        [
            "sample",
            str(tiny_checkpoint),
            "--n",
            "3",
            "--out",
            str(one / "grid.png"),
            "--out-dir",
            str(one),
            "--device",
            "cpu",
            *args,
        ],
        capsys,
    )
    assert code == 0, err
    pixels = [Image.open(p).tobytes() for p in singles]
    assert pixels[:3] == [Image.open(p).tobytes() for p in sorted(one.glob("sample_*.png"))]
    assert len(set(pixels)) == 5  # rank 1 drew other noise than rank 0

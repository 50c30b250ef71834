"""``--precision auto|fp32|bf16|fp64`` of ``difflab sample`` and ``eval``: auto takes bf16 only
where the device computes it natively and says which it chose, once; an explicit bf16 on a CPU
that emulates it warns in one line."""

import pytest
import torch

from difflab.cli import common
from difflab.errors import DifflabError
from tests.cli.conftest import run_cli

CPU = torch.device("cpu")


@pytest.fixture(params=[False, True], ids=["avx2-only", "native-bf16"])
def native(request, monkeypatch) -> bool:
    """Pretend the CPU has (or lacks) AVX-512 BF16 / AMX."""
    monkeypatch.setattr("difflab.io.device.cpu_has_native_bf16", lambda: request.param)
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_auto_is_bf16_only_where_native_and_says_so_once(native, capsys):
    """Fails if auto takes bf16 on an emulating CPU (10x slower there) or stays silent."""
    assert common.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"precision: auto -> {'bf16' if native else 'fp32'} ("
    )
    assert ("native" if native else "emulated") in lines[0]
    assert common.resolve_precision("auto", CPU, report=False) in ("bf16", "fp32")
    assert capsys.readouterr().err == ""  # the other ranks of a distributed run say nothing


def test_explicit_bf16_warns_only_where_emulated(native, capsys):
    """Fails if the warning is lost, repeated, or shown on a CPU with native bf16."""
    assert common.resolve_precision("bf16", CPU) == "bf16"
    err = capsys.readouterr().err.splitlines()
    assert err == ([] if native else [err[0]]) and all("emulated" in line for line in err)
    for name in ("fp32", "fp64"):
        assert common.resolve_precision(name, CPU) == name
    assert capsys.readouterr().err == ""
    with pytest.raises(DifflabError, match="unknown precision"):
        common.resolve_precision("fp16", CPU)


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_sample_reports_the_chosen_precision(tiny_checkpoint, tmp_path, capsys, precision):
    """difflab sample on an AVX2-only CPU: auto runs fp32 and says so once; bf16 warns once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "cpu_has_native_bf16", lambda: False)
        patch.setattr("difflab.io.device.cpu_has_native_bf16", lambda: False)
        argv = ["sample", str(tiny_checkpoint), "--steps", "2", "--n", "2", "--device", "cpu"]
        argv += ["--out", str(tmp_path / "g.png"), "--precision", precision]
        code, _, err = run_cli(argv, capsys)
    assert code == 0
    expected = "precision: auto -> fp32" if precision == "auto" else "warning: bf16 is emulated"
    said = [line for line in err.splitlines() if "bf16" in line or "precision" in line]
    assert len(said) == 1 and said[0].startswith(expected)


@pytest.mark.parametrize(
    "model,args,spacing",
    [
        ("mnist_ddim", ["--sampler", "ddim"], "uniform"),
        ("mnist_ddim", ["--sampler", "dpm++2m"], "karras"),
        ("mnist_ddim", ["--sampler", "heun", "--spacing", "trailing"], "trailing"),
        ("mnist_fast", ["--sampler", "dpm++2m"], "trailing"),  # v-prediction, cosine schedule
        ("mnist_fast", ["--sampler", "dpm++2m", "--spacing", "karras"], "karras"),
    ],
)
def test_the_spacing_defaults_to_what_the_sampler_and_model_call_for(model, args, spacing):
    """Fails if DPM-Solver++ and the EDM samplers lose their karras default on the linear
    schedule, if a v model on the cosine schedule is not sampled with trailing steps (karras
    puts 6 of 10 steps at t >= 994 there), or if --spacing stops overriding it."""
    from difflab.cli import build_parser
    from difflab.pipelines import load_pipeline

    parsed = build_parser().parse_args(["sample", model, *args])
    assert common.sampler_spacing(parsed, load_pipeline(model)) == spacing

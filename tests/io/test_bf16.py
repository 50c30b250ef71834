"""train.bf16: true, false, or "auto" (on only where the hardware computes bf16 natively)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difflab.config import load_config
from difflab.errors import DifflabError
from difflab.io import device as device_module
from difflab.io.device import autocast, bf16_enabled

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_capability(monkeypatch, native):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert bf16_enabled("auto", CPU) is native
    assert bf16_enabled(True, CPU) and not bf16_enabled(False, CPU)
    with autocast("auto", CPU):
        assert torch.is_autocast_cpu_enabled() is native


def test_the_detection_reads_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split()
    expected = "avx512_bf16" in flags or "amx_bf16" in flags
    assert device_module.cpu_has_native_bf16() is expected


def test_other_values_are_one_sentence(tmp_path):
    with pytest.raises(DifflabError, match=r"train\.bf16 must be true, false or auto"):
        bf16_enabled("yes", CPU)
    with pytest.raises(DifflabError, match=r"train\.bf16 must be true, false or auto"):
        load_config(None, ["train.bf16=fast"])
    assert load_config(None, ["train.bf16=auto"]).train.bf16 == "auto"

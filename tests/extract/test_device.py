"""Device and precision helpers: TF32 is switched off only inside a true-fp32 forward, and the
configuration side of stage 1 loads without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aqa.errors import UserError
from extract.device import autocast_context

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
    yield lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")
def test_true_fp32_turns_tf32_off_only_inside_the_forward_context(tf32_flags):
    context = autocast_context(torch.device("cuda"), "fp32")
    assert tf32_flags() == (True, True)  # building the context changes nothing
    with context:
        assert tf32_flags() == (False, False)
    assert tf32_flags() == (True, True)  # the caller's settings are back
    with pytest.raises(RuntimeError), autocast_context(torch.device("cuda"), "fp32"):
        raise RuntimeError("a failing forward")
    assert tf32_flags() == (True, True)


def test_bad_precisions_fail_when_the_context_is_built_not_when_entered():
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        autocast_context(torch.device("cpu"), "fp16")
    with pytest.raises(UserError, match="unknown precision"):
        autocast_context(torch.device("cpu"), "fp8")


def test_configuration_and_input_checks_load_without_torch():
    code = ("import sys, extract, extract.plan, extract.config, extract.backbone, extract.device, extract.clips; "
            "extract.ExtractConfig(views='flip'); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

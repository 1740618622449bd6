import pytest
import torch

from taichi_kernels import runtime


def test_init_is_idempotent_and_on_cpu():
    assert runtime.ensure_initialized() == "cpu"
    assert runtime.ensure_initialized() == "cpu"
    assert runtime.current_arch() == "cpu"
    assert runtime.torch_device() == torch.device("cpu")


def test_bad_arch_name_is_refused(monkeypatch):
    monkeypatch.setenv(runtime.ARCH_ENV, "tpu")
    with pytest.raises(runtime.ArchError, match="not a backend"):
        runtime.requested_arch()


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(runtime.ARCH_ENV, "cuda")
    with pytest.raises(runtime.ArchError, match="torch sees no GPU"):
        runtime.requested_arch()


def test_switching_backend_after_init_is_refused():
    runtime.ensure_initialized()
    if not torch.cuda.is_available():
        with pytest.raises(runtime.ArchError):
            runtime.ensure_initialized("cuda")

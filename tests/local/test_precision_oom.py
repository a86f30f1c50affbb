"""Any CUDA allocation failure is out of memory (issue #29): torch raises some as a plain
RuntimeError (cuBLAS's workspace, "CUDA error: out of memory"), not as torch.OutOfMemoryError."""

from __future__ import annotations

import pytest
from vrollout.errors import ModelOutOfMemory
from vrollout.local.backend import out_of_memory_freed


def failing(message: str):
    @out_of_memory_freed
    def work() -> None:
        raise RuntimeError(message)

    return work


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ],
)
def test_a_cuda_allocation_failure_is_out_of_memory(message):
    with pytest.raises(ModelOutOfMemory, match="ran out of memory"):
        failing(message)()


def test_another_runtime_error_stays_what_it_is():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        failing("shape mismatch")()

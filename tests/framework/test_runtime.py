"""CPU budget of the retrieval runtime (docs/pipeline.md §3)."""
import pytest

from rosa_lightning.retrieval.budget import cpu_budget


@pytest.mark.parametrize("usable,world,workers,acc,kernel,torch_threads", [
    (2, 1, 0, False, 1, 2),     # this machine: one kernel thread, torch keeps both cores
    (64, 8, 2, True, 5, 1),     # 8 GPUs on 64 cores: 8 per rank, minus main thread and 2 workers
    (16, 1, 4, True, 11, 1),
    (4, 8, 2, True, 1, 1),      # never below one thread
])
def test_cpu_budget(usable, world, workers, acc, kernel, torch_threads):
    b = cpu_budget(usable, world, workers, cpu_reserved=1, on_accelerator=acc)
    assert (b["kernel"], b["torch"]) == (kernel, torch_threads)


def test_cpu_budget_rejects_bad_inputs():
    with pytest.raises(ValueError, match="num_workers"):
        cpu_budget(4, 1, -1)

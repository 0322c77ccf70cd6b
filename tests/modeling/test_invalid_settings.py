"""Impossible ROSA settings are refused where they are given: non-int values (bools included), thread counts
OpenMP cannot start, and a retrieval job that hangs ends in a timeout naming the layer."""
import threading
import time

import pytest
import torch

from rosa_lightning.modeling import RosaConfig
from rosa_lightning.retrieval import RetrievalPipeline, RetrievalTimeout
from rosa_lightning.retrieval import rosa_match
from rosa_lightning.retrieval.budget import max_kernel_threads


@pytest.mark.parametrize("field, value", [("bits", True), ("bits", 4.0), ("global_layers", True), ("window", True),
                                          ("rosa_layers", [True]), ("runtime.num_threads", True)])
def test_bool_and_float_are_not_ints(field, value):
    with pytest.raises(ValueError, match=f"RosaConfig.{field}"):
        RosaConfig.from_dict({field.split(".")[-1]: value})


def test_thread_count_beyond_the_machine_is_refused_before_any_thread_starts():
    cap = max_kernel_threads()
    assert 64 <= cap <= 16_384  # half of the thread limit at most; OpenMP aborted at 40,000 on a 32,768 limit
    q = torch.zeros(1, 4, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="num_threads=100000 is more than this machine allows"):
        rosa_match(q, q, 4, 100_000)
    with pytest.raises(ValueError, match="num_threads=100000"):
        RetrievalPipeline(100_000)
    assert RetrievalPipeline(cap).num_threads == cap


def test_hanging_retrieval_job_times_out_naming_the_layer():
    release = threading.Event()

    def hanging(*args, **kwargs):
        release.wait(30)
        raise RuntimeError("released")

    q = torch.zeros(1, 8, 2, dtype=torch.uint8)
    pipe = RetrievalPipeline(1, match_fn=hanging, wait_timeout_s=0.3).start()
    handle = pipe.submit(5, q, q, 4, want_cf=False)
    worker = pipe._executor._thread
    t0 = time.perf_counter()
    with pytest.raises(RetrievalTimeout, match=r"ROSA layer 5 did not finish within 0.3 s \(callbacks.retrieval_runtime"):
        handle.wait()
    pipe.close()  # does not wait for the stuck job
    assert time.perf_counter() - t0 < 5
    assert worker.is_alive() and worker.daemon  # stuck, but cannot keep the process alive at exit
    release.set()
    worker.join(5)


def test_wait_timeout_is_validated():
    with pytest.raises(ValueError, match="wait_timeout_s"):
        RetrievalPipeline(1, wait_timeout_s=0)


def test_worker_thread_ends_when_an_unclosed_pipeline_is_collected():
    import gc

    pipe = RetrievalPipeline(1, match_fn=lambda *a, **k: None).start()
    worker = pipe._executor._thread
    assert worker.is_alive()
    del pipe
    gc.collect()
    worker.join(5)
    assert not worker.is_alive()  # a model's lazily created pipeline leaks no thread

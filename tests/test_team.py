"""The kernels' team: parts of a split run at once, OpenBLAS's jobs run on it, nothing hangs
(a product from inside a part, a forked child, parked workers), and split kernels give the bits
of the unsplit ones."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vertexflow import machine
from vertexflow.kernels import available, epilogue, norm
from vertexflow.kernels import team as team_module

pytestmark = pytest.mark.skipif(not team_module.enabled(), reason="no team here: numba missing or one core")


@pytest.fixture
def crew():
    crew = team_module.team()
    crew.park(False)
    yield crew
    crew.park(False)


def _product_operands():
    rng = np.random.default_rng(0)
    # 4096 x 64 x 256: far above OpenBLAS's threshold for two threads
    return rng.standard_normal((4096, 64), np.float32), rng.standard_normal((64, 256), np.float32)


def test_a_split_runs_its_parts_at_once_on_the_team(crew):
    parts = crew.workers + 1
    meet = threading.Barrier(parts, timeout=10)  # broken (an error) unless every part runs at once
    ran = {}

    def work(first, last):
        meet.wait()
        ran[(first, last)] = threading.current_thread().name

    crew.split(work, 2 * parts, parts)
    assert sorted(ran) == [(2 * k, 2 * k + 2) for k in range(parts)]
    assert ran[(0, 2)] == threading.current_thread().name
    assert {ran[key] for key in ran if key != (0, 2)} == {f"vf-kernels-team-{w}" for w in range(crew.workers)}


def test_a_kernel_split_runs_its_parts_at_once(crew):
    import numba

    from vertexflow.kernels import atomics

    atomic_load, atomic_store = atomics.load, atomics.store

    @numba.njit(nogil=True)
    def all_raised(flags_address, count):
        for k in range(count):
            if atomic_load(flags_address, k) == 0:
                return False
        return True

    @numba.njit(nogil=True)
    def meet(flags_address, first, last, met):
        # Part k raises its flag, then waits (bounded) for every other part's: run one after the
        # other, the first part would give up before the second began.
        atomic_store(flags_address, first, 1)
        for _ in range(2_000_000_000):
            if all_raised(flags_address, met.shape[0]):
                met[first] = 1
                return

    parts = crew.workers + 1
    flags, met = np.zeros(parts, np.int64), np.zeros(parts, np.int64)
    crew.split_kernel(meet, lambda first, last: (flags.ctypes.data, first, last, met), parts, parts)
    assert met.tolist() == [1] * parts


def test_c_jobs_run_at_once_on_the_team_without_the_gil(crew):
    import numba
    from numba import types

    from vertexflow.kernels import atomics, team_loops

    atomic_load, atomic_store = atomics.load, atomics.store

    @numba.cfunc(types.void(types.int32, types.voidptr, types.int32))
    def meet(index, data, extra):
        # Job k raises its flag, then waits (bounded) for every other job's: run one after the other,
        # the first job would give up before the second began.
        row = numba.carray(data, 3, np.int64)
        flags, job, count = row[0], row[1], row[2]
        atomic_store(flags, job, 1)
        for _ in range(2_000_000_000):
            met = True
            for k in range(count):
                met = met and atomic_load(flags, k) != 0
            if met:
                atomic_store(flags, count + job, 1)
                return

    parts = crew.workers + 1
    flags = np.zeros(2 * parts, np.int64)
    record = np.array([[flags.ctypes.data, k, parts] for k in range(parts)], np.int64)
    before = crew.statistics()["worker_products"]
    team_loops.run_jobs(team_module.CONTROL, meet.address, parts, record.ctypes.data, record.strides[0], 0)
    assert flags[parts:].tolist() == [1] * parts
    assert [b - a for a, b in zip(before, crew.statistics()["worker_products"])] == [1] * crew.workers


def test_c_jobs_from_inside_a_split_run_one_after_another(crew, monkeypatch):
    from vertexflow.kernels import products

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 64), np.float32), rng.standard_normal((64, 64), np.float32)
    want = products.times_transposed(x, w)
    monkeypatch.setattr(products, "MIN_PART_PRODUCTS", 1)  # a product of jobs, however small
    got = {}

    def work(first, last):  # from inside a part the team is busy: its jobs run on this thread, in turn
        got[first] = products.times_transposed(x, w)

    before = crew.statistics()["worker_products"]
    with machine.blas_threads(machine.cores()):
        crew.split(work, 2, 2)
    assert sorted(got) == [0, 1]
    for value in got.values():
        np.testing.assert_array_equal(value, want)
    assert crew.statistics()["worker_products"] == before


def test_an_error_in_a_part_is_raised_by_the_caller_and_the_team_goes_on(crew):
    def work(first, last):
        if first > 0:
            raise ValueError(f"part {first} failed")

    with pytest.raises(ValueError, match="part 1 failed"):
        crew.split(work, 2, 2)
    ran = []
    crew.split(lambda first, last: ran.append(first), 2, 2)
    assert sorted(ran) == [0, 1]


def test_openblas_runs_its_parallel_products_on_the_team(crew):
    if not crew.blas:
        pytest.skip("this OpenBLAS has no caller-managed threading (0.3.27+)")
    a, b = _product_operands()
    before = crew.statistics()
    with machine.blas_threads(2):
        got = a @ b
    after = crew.statistics()
    assert after["team_products"] > before["team_products"]
    assert sum(after["worker_products"]) > sum(before["worker_products"])
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_a_parallel_product_inside_a_part_runs_on_threads_of_its_own(crew):
    if not crew.blas:
        pytest.skip("this OpenBLAS has no caller-managed threading (0.3.27+)")
    a, b = _product_operands()
    results = {}
    before = crew.statistics()["fallback_products"]

    def work(first, last):  # on the workers and on the lock's holder: the team is theirs already
        results[first] = a @ b

    with machine.blas_threads(2):
        crew.split(work, 2, 2)
    assert crew.statistics()["fallback_products"] >= before + 2
    for got in results.values():
        np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def _child(queue):
    a, b = _product_operands()
    with machine.blas_threads(2):
        product = a @ b
    x = np.random.default_rng(1).standard_normal((4096, 64), np.float32)
    queue.put((float(np.abs(product - a.astype(np.float64) @ b).max()),
               float(np.abs(norm.softmax_last(x).sum(-1) - 1).max())))


def test_a_forked_child_computes_with_openblas_threads_of_its_own(crew):
    a, b = _product_operands()
    with machine.blas_threads(2):
        a @ b  # the team serves the parent's products at the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    product_error, softmax_error = queue.get(timeout=5)
    assert product_error < 1e-3 and softmax_error < 1e-5


def test_parked_workers_sleep_and_still_take_a_split(crew):
    crew.park(True)
    crew.split(lambda first, last: None, 2, 2)  # wakes them, they run it and sleep again
    for _ in range(1000):
        if all(crew.asleep()):
            break
        threading.Event().wait(0.01)
    assert all(crew.asleep())
    meet = threading.Barrier(2, timeout=10)
    crew.split(lambda first, last: meet.wait(), 2, 2)


def test_an_executor_sharing_the_cores_parks_the_team(crew):
    shares = machine.BlasThreads()
    with shares.sharing(parallel=machine.cores()):
        assert team_module._control[team_module.PARK] == 1
    assert team_module._control[team_module.PARK] == 0


def test_threads_in_force_is_one_inside_a_kernels_split():
    with machine.blas_threads(2):
        assert machine.threads_in_force() == 2
        with machine.blas_split(2):
            assert machine.threads_in_force() == 1
        assert machine.threads_in_force() == 2


def test_threads_in_force_follows_blas_limits_set_by_threadpoolctl():
    from threadpoolctl import threadpool_limits

    with machine.blas_threads(2):
        with threadpool_limits(1, user_api="blas"):  # a user's own limit, read through OpenBLAS's getter
            assert machine.threads_in_force() == 1
        assert machine.threads_in_force() == 2


def test_a_team_needs_a_worker():
    with pytest.raises(ValueError, match="a team has 1 to 63 workers, not 0"):
        team_module.Team(0)


def test_the_team_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("VERTEXFLOW_TEAM", "off")
    assert not team_module.enabled()


@pytest.mark.skipif(not available(), reason="numba kernels only")
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), width=st.integers(1, 70), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_split_row_kernels_give_the_bits_of_unsplit_ones(rows, width, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, width)) * 4).astype(dtype)
    weight, bias = rng.standard_normal(width).astype(dtype), rng.standard_normal(width).astype(dtype)
    product_bias = rng.standard_normal(width).astype(dtype)

    def compute():
        out = x.copy()
        epilogue.bias_activation(out, product_bias, 1, epilogue.GELU if dtype == np.float32 else epilogue.CLIP,
                                 -1.0, 1.0)
        return norm.softmax_last(x), norm.layer_norm_last(x, weight, bias, 1e-5), out

    whole = compute()
    with pytest.MonkeyPatch.context() as patch:  # every part of a row or more
        for module in (team_module, norm, epilogue):
            patch.setattr(module, "MIN_PART_ELEMENTS", 1, raising=False)
            patch.setattr(module, "MIN_PYTHON_PART_ELEMENTS", 1, raising=False)
        with machine.blas_threads(machine.cores()):
            split = compute()
    for w, s in zip(whole, split):
        np.testing.assert_array_equal(w, s)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(2, 9), heads=st.integers(1, 3), m=st.integers(1, 20), k=st.integers(1, 20),
       n=st.integers(1, 20), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_a_split_stack_of_products_gives_numpys_bits(batch, heads, m, k, n, transposed, seed):
    from vertexflow.kernels import im2col
    from vertexflow.ops import linalg

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, heads, m, k), np.float32)
    b = rng.standard_normal((batch, heads, n, k) if transposed else (batch, heads, k, n), np.float32)
    b = b.transpose(0, 1, 3, 2) if transposed else b  # attention's q @ k.T: a strided operand
    parts = []
    split = team_module.Team.split
    with pytest.MonkeyPatch.context() as patch:  # split however small
        patch.setattr(linalg, "_MIN_STACK_SPLIT_FLOPS", 0)
        patch.setattr(im2col, "MIN_SPLIT_FLOPS", 1e-9)
        patch.setattr(team_module.Team, "split", lambda self, work, items, count: (
            parts.append(count), split(self, work, items, count)))
        with machine.blas_threads(machine.cores()):
            got = linalg.Matmul().forward(np, a, b)
    np.testing.assert_array_equal(got, np.matmul(a, b))
    assert parts == [min(batch, machine.cores())]


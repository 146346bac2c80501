"""Ranks agree on the model and the training config before data-parallel training starts
(issue 13, item 8).  Before, ranks with transposed parameter shapes passed the check and
silently reshaped, dtype or batch-size mismatches ended in raw MPI errors and different
seeds per rank went unnoticed."""
import sys

import numpy as np
import pytest

import nn
from nn import distributed as dist
from test_distributed import SCRIPTS, _run_mpi, common, needs_mpi

sys.path.insert(0, str(SCRIPTS))
from dp_mismatch import Transposed  # noqa: E402


def _errors(size, model_for, config_for=lambda rank: None):
    def body(comm):
        try:
            dist.DataParallel(model_for(comm.rank), comm, config=config_for(comm.rank))
        except dist.RanksDisagreeError as exc:
            return exc
        return None
    return dist.FakeComm.run(size, body)


def _check_one_message(errors, *fragments):
    assert all(isinstance(e, dist.RanksDisagreeError) for e in errors), errors
    messages = {str(e) for e in errors}
    assert len(messages) == 1, messages   # the same line everywhere
    (message,) = messages
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert [e.quiet for e in errors] == [False] + [True] * (len(errors) - 1)


@pytest.mark.parametrize("size", [2, 3])
def test_transposed_parameter_shapes_are_refused(size):
    errors = _errors(size, lambda r: Transposed() if r == size - 1 else common.TinyMLP())
    _check_one_message(errors, "different models", "parameter w1: shape (5, 4)",
                       "parameter w1: shape (4, 5)", f"rank {size - 1}")


def test_dtype_mismatch_is_refused():
    errors = _errors(2, lambda r: common.TinyMLP(dtype=np.float32 if r else np.float64))
    _check_one_message(errors, "dtype float64", "dtype float32", "rank 1")


@pytest.mark.parametrize("key, values", [("seed", (0, 1)), ("batch_size", (32, 64))])
def test_config_mismatch_is_refused(key, values):
    errors = _errors(3, lambda r: common.TinyMLP(),
                     lambda r: {"lr": 0.1, key: values[r == 1]})
    _check_one_message(errors, f"config {key} = {values[0]}", f"config {key} = {values[1]}",
                       "rank 1")


def test_extra_parameter_is_named():
    class Wider(common.TinyMLP):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(np.zeros(3))
    errors = _errors(2, lambda r: Wider() if r else common.TinyMLP())
    _check_one_message(errors, "parameter extra: shape (3,)", "'<nothing>'")


def test_agreeing_ranks_pay_one_small_allreduce():
    logs = dist.FakeComm.run(3, lambda comm: (
        dist.DataParallel(common.TinyMLP(), comm, config={"seed": 0}), comm.log)[1])
    for log in logs:
        assert log[0] == ("allreduce_sum", "float64", 32)   # 16 hash pieces and squares
        # the rest is the broadcast of rank 0's parameters and buffers, no more checking
        assert [op for op, _, _ in log].count("allreduce_sum") == 1, log


def test_hash_check_catches_a_rank_between_two_others():
    # pieces a < b < c on three ranks: the middle one matches the mean, not the squares
    lines = [["same"], ["other"], ["third"]]
    out = dist.FakeComm.run(3, lambda comm: _catch(comm, lines[comm.rank]))
    assert all(isinstance(e, dist.RanksDisagreeError) for e in out)


def _catch(comm, lines):
    try:
        dist.check_agreement(comm, lines)
    except dist.RanksDisagreeError as exc:
        return exc
    return None


@needs_mpi
@pytest.mark.parametrize("kind, fragment", [
    ("transposed", "parameter w1: shape (4, 5)"), ("dtype", "dtype float32"),
    ("seed", "config seed = 1"), ("batch_size", "config batch_size = 64"),
    ("none", None)])
def test_mpi_ranks_refuse_a_mismatch_with_one_line(kind, fragment):
    proc, seconds = _run_mpi(2, SCRIPTS / "dp_mismatch.py", kind, timeout=60)
    if fragment is None:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("no error") == 2
        return
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr

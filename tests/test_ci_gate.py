"""CI is a gate: `.ci/run` exits non-zero when a test fails, in either stage.

``NUMBA_DL_PLANT_FAILURE=cpu`` makes ``test_planted_failure_cpu`` fail in the CPU stage;
``NUMBA_DL_PLANT_FAILURE=cuda`` makes ``test_planted_failure_cuda`` fail in the simulator
stage only.  ``test_ci_run_fails_when_a_stage_fails`` runs the real script (reusing this
Python instead of a fresh virtual environment, and only this file) with each planted failure
and without, and checks the exit status and which stages ran.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

ROOT = Path(__file__).resolve().parents[1]
PLANTED = os.environ.get("NUMBA_DL_PLANT_FAILURE", "")


def test_planted_failure_cpu():
    assert PLANTED != "cpu", "planted failure (NUMBA_DL_PLANT_FAILURE=cpu): CI must go red"


@pytest.mark.cuda
def test_planted_failure_cuda(cuda_device):
    assert PLANTED != "cuda", "planted failure (NUMBA_DL_PLANT_FAILURE=cuda): CI must go red"


def _run_ci(plant):
    env = dict(os.environ, CI_REUSE_PYTHON="1", NUMBA_DL_PLANT_FAILURE=plant,
               CI_PYTEST_ARGS=f"{Path(__file__).resolve()} -k planted")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    # The script calls `python`: make it this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(PLANTED != "", reason="this is the inner run of the gate's self-test")
@pytest.mark.skipif(kernels.SIMULATOR, reason="runs once, in the CPU stage")
@pytest.mark.parametrize("plant, code, stages", [
    ("", 0, ["stage 1", "stage 2", "tests took"]),
    ("cpu", 1, ["stage 1"]),
    ("cuda", 1, ["stage 1", "stage 2"]),
])
def test_ci_run_fails_when_a_stage_fails(plant, code, stages):
    done = _run_ci(plant)
    out = done.stdout + done.stderr
    assert done.returncode == code, out[-3000:]
    for marker in ["stage 1", "stage 2", "tests took"]:
        assert (marker in out) == (marker in stages), (marker, out[-3000:])
    if plant:
        assert "planted failure" in out

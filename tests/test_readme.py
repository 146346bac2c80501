"""Every command in README.md works as written.

The README's fenced blocks are read here: ```python blocks run as scripts, and every shell
command (a ```bash block's lines, or a ``$ `` line in an output block) is split at ``&&`` and
each part is looked up in two tables.  CHEAP commands run (with a stated substitution where
running them as written would take too long or write into the checkout), EXPENSIVE ones are
listed with the reason they do not run here and what covers them instead.  A command in
neither table fails ``test_every_shell_command_is_classified``: whoever adds a command to the
README decides here whether the suite runs it.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks():
    """(language, first line number, text, section heading) of every fenced block."""
    out, lang, start, lines, section = [], None, 0, [], ""
    for number, line in enumerate(README.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip() or "text", number, []
            else:
                out.append((lang, start, "\n".join(lines) + "\n", section))
                lang = None
        elif lang is not None:
            lines.append(line)
        elif line.startswith("## "):
            section = line[3:].strip()
    assert lang is None, "README.md has an unclosed code block"
    return out


BLOCKS = _blocks()


def _python_sections():
    """(section, first line, script): a section's ```python blocks run as one script, in order,
    because a later block may use what an earlier one defined (as a reader runs them)."""
    sections = {}
    for lang, start, text, section in BLOCKS:
        if lang == "python":
            first, script = sections.get(section, (start, ""))
            sections[section] = (first, script + text)
    return [(section, first, script) for section, (first, script) in sections.items()]


PYTHON_SECTIONS = _python_sections()


def _shell_commands():
    """(line number, command) for every shell command in the README, split at ``&&``."""
    found = []
    for lang, start, text, _ in BLOCKS:
        if lang in ("bash", "sh", "shell", "console"):
            # a here-document is one command with its body
            text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "<<HEREDOC\n", text, flags=re.S)
            lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
        elif lang == "text":
            lines = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("$ ")]
        else:
            continue
        for offset, line in enumerate(lines, 1):
            for part in filter(None, (p.strip() for p in line.split("&&"))):
                found.append((start + offset, part))
    return found


COMMANDS = _shell_commands()

# What does not run in the suite, and why.  Each pattern must match some README command
# (test_tables_have_no_dead_entries), so the table cannot rot.
EXPENSIVE = {
    r"pip install .*": "installs into the current environment; .ci/run does this in a fresh one",
    r"python -m pytest": "the CPU suite itself (.ci/run stage 1)",
    r"NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda": "the simulator suite (.ci/run stage 2)",
    r"mpiexec -n 2 python -m mpi4py -m nn train --distributed":
        "a full two-rank training; tests/nn/test_distributed.py runs mpiexec with one epoch",
    r"cat > hosts <<HEREDOC": "writes a host file for a multi-machine run",
    r"mpiexec -f hosts .*": "needs the machines named in the host file",
    r"python -m pytest benchmarks/ --benchmark-only --benchmark-json=results.json":
        "the whole benchmark suite takes many minutes; test_benchmarks_collect checks it "
        "collects every bench_*.py file and test_benchmark_json_and_report runs a small part",
    r"benchmarks/gpu_check.sh": "installs the cuda extra and needs an NVIDIA GPU; "
        "tests/kernels/test_cuda_setup.py runs the offline form up to its GPU step",
    r"GPU_CHECK_OFFLINE=1 benchmarks/gpu_check.sh": "needs an NVIDIA GPU to get past its "
        "device step; tests/kernels/test_cuda_setup.py runs it here and checks it stops there",
    r"python benchmarks/report.py new.json --compare old.json":
        "needs two runs; test_benchmark_json_and_report runs --compare on one run twice",
}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A one-epoch `python -m nn train`, the README's first command, for evaluate to read."""
    out = tmp_path_factory.mktemp("readme") / "run"
    done = _shell(f"python -m nn train --epochs 1 --quiet --out {out}", cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "test.json").read_text())["accuracy"] > 0.5, "one epoch learned nothing"
    return out


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _shell(command, cwd, timeout=600):
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _cheap_train(cmd, tmp_path, run_folder):
    # As written it trains 30 epochs into runs/<time>-...; one epoch shows the command works.
    return f"{cmd} --epochs 1 --out {tmp_path / 'run'}"


def _in_run_folder(cmd, tmp_path, run_folder):
    return re.sub(r"runs/\S+", str(run_folder), cmd)


def _as_written(cmd, tmp_path, run_folder):
    return cmd


def _report_on_small_json(cmd, tmp_path, run_folder):
    # The README's paths are relative to the checkout; results.json and its figure go here.
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    _small_benchmark_json(tmp_path / "results.json")
    return cmd


# Commands the suite runs: pattern -> how (the command as written, or a stated substitution).
CHEAP = {
    r"python -m nn train": _cheap_train,
    r"python -m nn evaluate runs/\S+": _in_run_folder,
    r"python -m nn export runs/\S+ --format (safetensors|onnx)": _in_run_folder,
    r"python -m nn summary .*": _as_written,
    r"python benchmarks/report.py results.json": _report_on_small_json,
}


def _classify(command):
    for table in (CHEAP, EXPENSIVE):
        for pattern in table:
            if re.fullmatch(pattern, command):
                return table, pattern
    return None, None


def test_every_shell_command_is_classified():
    unknown = [(line, cmd) for line, cmd in COMMANDS if _classify(cmd)[0] is None]
    assert not unknown, ("README commands neither run nor listed as expensive in "
                         f"tests/test_readme.py: {unknown}")


def test_tables_have_no_dead_entries():
    used = {_classify(cmd)[1] for _, cmd in COMMANDS}
    dead = [p for p in list(CHEAP) + list(EXPENSIVE) if p not in used]
    assert not dead, f"patterns that match no README command: {dead}"


CHEAP_COMMANDS = [(line, cmd) for line, cmd in COMMANDS if _classify(cmd)[0] is CHEAP]


@pytest.mark.slow
@pytest.mark.parametrize("line, command", CHEAP_COMMANDS, ids=[c for _, c in CHEAP_COMMANDS])
def test_cheap_shell_command_runs(line, command, tmp_path, run_folder):
    _, pattern = _classify(command)
    actual = CHEAP[pattern](command, tmp_path, run_folder)
    done = _shell(actual, cwd=tmp_path)
    assert done.returncode == 0, f"README line {line}: {actual}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"README line {line}: {actual} printed nothing"


def test_summary_output_is_the_one_shown():
    """The README shows `python -m nn summary --model lenet`'s output: it must be current."""
    for lang, _, text, _ in BLOCKS:
        lines = text.splitlines()
        if lang == "text" and lines and lines[0].startswith("$ python -m nn summary"):
            done = _shell(lines[0][2:], cwd=ROOT)
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.splitlines() == lines[1:]
            return
    pytest.fail("README.md no longer shows a summary example")


# A ```python block that is a fragment (it continues an earlier example) runs after a prelude
# that defines what it uses; key: a line the block contains.
PRELUDES = {
    "ort.InferenceSession": """
import os
import numpy as np
import nn
os.makedirs("runs/<run>")
model = nn.models.LeNet5(in_channels=1, num_classes=10, input_size=8).eval()
x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype("float32")
nn.export_onnx(model, x[:1], "runs/<run>/model.onnx")
""",
    "comm = dist.init(\"mpi\")": """
import nn
from nn import data
nn.manual_seed(0)
model = nn.models.MLP([64, 16, 10])
loader = data.DataLoader(data.digits(), batch_size=64)   # MLP flattens each image
loss_fn = nn.CrossEntropyLoss()
optimizer = nn.optim.SGD(model.parameters(), lr=0.1)
""",
}


# ... and checks after it that what it computed is right.
POSTLUDES = {
    "ort.InferenceSession": """
np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-5 * np.abs(logits).max())
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("section, start, text", PYTHON_SECTIONS,
                         ids=[section for section, _, _ in PYTHON_SECTIONS])
def test_python_blocks_run(section, start, text, tmp_path):
    prelude = "".join(p for key, p in PRELUDES.items() if key in text)
    postlude = "".join(p for key, p in POSTLUDES.items() if key in text)
    script = tmp_path / f"readme_line{start}.py"
    script.write_text(prelude + text + postlude)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README section {section!r}:\n{done.stderr[-3000:]}"


def test_benchmarks_collect():
    """`pytest benchmarks/` must find the bench_*.py files (it found none before python_files)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = {Path(p.split("::")[0]).name for p in done.stdout.splitlines() if "::" in p}
    expected = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    # bench_distributed runs under mpiexec only and may collect nothing in one process
    assert expected - {"bench_distributed.py"} <= files, sorted(expected - files)


def _small_benchmark_json(path):
    """A real pytest-benchmark JSON from a few quick benchmarks (relu at its VGG shape)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/bench_activation.py", "--benchmark-only",
         "-k", "relu and not leaky", "-p", "no:cacheprovider", "--benchmark-min-rounds=3",
         "--benchmark-max-time=0.05", "--benchmark-warmup=off", f"--benchmark-json={path}",
         "-q"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(Path(path).read_text())["benchmarks"], "no benchmark ran"


@pytest.mark.slow
def test_benchmark_json_and_report(tmp_path):
    results = tmp_path / "results.json"
    _small_benchmark_json(results)
    report = [sys.executable, str(ROOT / "benchmarks" / "report.py")]
    done = subprocess.run(report + [str(results)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "relu" in done.stdout
    done = subprocess.run(report + [str(results), "--compare", str(results)], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_shlex_can_read_every_command():
    for line, cmd in COMMANDS:
        shlex.split(cmd.replace("<<HEREDOC", ""))  # raises on unbalanced quotes

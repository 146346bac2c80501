"""The benchmark report on a small saved result file (CI does not run the benchmarks)."""
import importlib.util
import json
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(name, median, **info):
    return {"name": name, "group": None, "stats": {"median": median}, "extra_info": info}


def results(conv_median):
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}},
            "benchmarks": [
                bench("sgemm", 0.1, case="sgemm", impl="peak", flops=2 * 2048 ** 3),
                bench("copy", 0.01, case="copy", impl="peak", bytes=2 * 2 ** 26),
                bench("conv", conv_median, case="conv2d fwd vgg", impl="ours",
                      shape="32x64x32x32", flops=2e9, bytes=4e7),
                bench("conv_torch", 0.02, case="conv2d fwd vgg", impl="torch", flops=2e9),
                bench("conv_numpy", 0.04, case="conv2d fwd vgg", impl="numpy", flops=2e9),
                bench("relu", 0.001, case="relu fwd", impl="ours", shape="64 MiB", bytes=1.34e8),
            ]}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_table_rates_and_ratios(report, tmp_path):
    rows, _ = report.load(write(tmp_path, "new.json", results(0.01)))
    peak, bw = report.machine_roofs(rows)
    assert peak == pytest.approx(2 * 2048 ** 3 / 0.1 / 1e9)
    assert bw == pytest.approx(2 * 2 ** 26 / 0.01 / 1e9)
    text = report.table(rows)
    conv = next(line for line in text.splitlines() if line.startswith("| conv2d fwd vgg"))
    cells = [c.strip() for c in conv.strip("|").split("|")]
    assert cells[3] == "10.000"            # median in ms
    assert cells[4] == "200.0"             # 2e9 FLOP in 10 ms
    assert cells[7] == "4.00"              # numpy 40 ms / ours 10 ms
    assert cells[8] == "2.00"              # torch 20 ms / ours 10 ms
    assert cells[6].startswith(f"{100 * 200 / peak:.0f}%")
    relu = next(line for line in text.splitlines() if line.startswith("| relu fwd"))
    assert "134.0" in relu                 # GB/s
    assert "sgemm" not in [line.split("|")[1].strip() for line in text.splitlines()[2:]
                           if line.startswith("|")]


def test_compare_flags_regressions(report, tmp_path, capsys):
    old = write(tmp_path, "old.json", results(0.01))
    new = write(tmp_path, "new.json", results(0.02))
    plot = tmp_path / "roof.png"
    status = report.main([new, "--compare", old, "--plot", str(plot)])
    out = capsys.readouterr().out
    assert status == 1
    assert "conv2d fwd vgg [cpu]: 10.000 ms -> 20.000 ms" in out
    assert "| 0.50 |" in out               # old/new column
    if "matplotlib" in out:                # plot extra missing: notice instead of a plot
        assert not plot.exists()
    else:
        assert plot.stat().st_size > 1000


def test_no_regression_when_equal(report, tmp_path, capsys):
    path = write(tmp_path, "r.json", results(0.01))
    assert report.main([path, "--compare", path, "--plot", str(tmp_path / "p.png")]) == 0
    assert "No regression" in capsys.readouterr().out


def test_unreadable_file(report, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json"):
        report.load(str(bad))

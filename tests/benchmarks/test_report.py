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
    assert cells[4] == ""                  # no IQR recorded
    assert cells[5] == "200.0"             # 2e9 FLOP in 10 ms
    assert cells[8] == "4.00"              # numpy 40 ms / ours 10 ms
    assert cells[9] == "2.00"              # torch 20 ms / ours 10 ms
    assert cells[7].startswith(f"{100 * 200 / peak:.0f}%")
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


def test_header_shows_threads_and_environment_and_the_table_the_iqr(report, tmp_path, capsys):
    data = results(0.01)
    data["machine_info"]["threads"] = {"numba": 2, "blas": 1}
    data["machine_info"]["environment"] = {"OPENBLAS_CORETYPE": "Haswell", "numba": "0.61"}
    data["benchmarks"][2]["stats"]["iqr"] = 0.0015
    path = write(tmp_path, "r.json", data)
    assert report.main([path, "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "Machine: Test CPU, 2 cores" in out
    assert "Threads: blas 1, numba 2" in out
    assert "OPENBLAS_CORETYPE Haswell" in out
    head = next(line for line in out.splitlines() if line.startswith("| op"))
    assert "IQR ms" in head
    conv = next(line for line in out.splitlines() if line.startswith("| conv2d fwd vgg"))
    cells = [c.strip() for c in conv.strip("|").split("|")]
    assert cells[3] == "10.000" and cells[4] == "1.500"


def test_compare_warns_when_roofs_or_threads_differ(report, tmp_path, capsys):
    old = results(0.01)
    old["machine_info"]["threads"] = {"numba": 2}
    new = results(0.01)
    new["machine_info"]["threads"] = {"numba": 1}
    new["benchmarks"][0]["stats"]["median"] = 0.2      # sgemm half as fast: another roof
    status = report.main([write(tmp_path, "new.json", new), "--compare",
                          write(tmp_path, "old.json", old), "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert status == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, out
    assert "sgemm peak differs" in warnings[0] and "numba threads differ: 2" in warnings[1]
    # The same setup: no warning.
    assert report.main([write(tmp_path, "a.json", old), "--compare",
                        write(tmp_path, "b.json", old), "--plot", str(tmp_path / "q.png")]) == 0
    assert "warning:" not in capsys.readouterr().out


def test_roofline_plots_memory_bound_ops_in_their_own_panel(report, tmp_path):
    pytest.importorskip("matplotlib")
    rows, _ = report.load(write(tmp_path, "r.json", results(0.01)))
    path = report.roofline(rows, str(tmp_path / "roof.png"))
    from matplotlib.image import imread
    image = imread(path)
    # Two panels side by side: wider than tall by more than the single roofline would be.
    assert image.shape[1] > 2 * image.shape[0]

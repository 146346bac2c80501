"""Turn pytest-benchmark JSON into a Markdown table and a roofline plot.

    python -m pytest benchmarks/ --benchmark-only --benchmark-json=RESULTS.json
    python benchmarks/report.py RESULTS.json [--compare OLD.json] [--plot roofline.png]

Each benchmark's ``extra_info`` may carry (see ``benchmarks/conftest.py``):

* ``case``   - what is measured, shared by the implementations of it (``"conv2d fwd vgg"``);
* ``impl``   - ``"ours"``, ``"numpy"``, ``"torch"``, or ``"peak"`` for the machine baselines;
* ``device`` - ``"cpu"`` or ``"cuda"``;  ``shape`` - a readable shape string;
* ``flops`` and/or ``bytes`` - the work of one call.

Rows are the ``ours`` entries; the ``numpy`` and ``torch`` entries of the same case become
ratio columns (their median over ours: above 1 means ours is faster).  Peak entries
(``case`` "sgemm" with ``flops``, "copy" with ``bytes``) give the compute and bandwidth roofs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path):
    """The benchmarks of one pytest-benchmark JSON file, as a list of flat dicts."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"report: cannot read {path}: {exc}")
    rows = []
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info") or {})
        rows.append({
            "name": b["name"],
            "case": info.get("case") or b.get("group") or b["name"],
            "impl": info.get("impl", "ours"),
            "device": info.get("device", "cpu"),
            "shape": info.get("shape", ""),
            "flops": info.get("flops"),
            "bytes": info.get("bytes"),
            "median": b["stats"]["median"],
        })
    return rows, data.get("machine_info", {})


def machine_roofs(rows):
    """(peak GFLOP/s, bandwidth GB/s) measured in the run, or None where absent."""
    peak = bw = None
    for r in rows:
        if r["impl"] != "peak":
            continue
        if r["flops"]:
            peak = max(peak or 0.0, r["flops"] / r["median"] / 1e9)
        elif r["bytes"]:
            bw = max(bw or 0.0, r["bytes"] / r["median"] / 1e9)
    return peak, bw


def table(rows, compare=None):
    """Markdown table of the ``ours`` rows with rates, fraction of peak and ratios."""
    peak, bw = machine_roofs(rows)
    by_case = {}
    for r in rows:
        by_case.setdefault((r["case"], r["device"]), {})[r["impl"]] = r
    old = {}
    if compare:
        for r in compare:
            if r["impl"] == "ours":
                old[(r["case"], r["device"])] = r
    head = ["op", "shape", "device", "median ms", "GFLOP/s", "GB/s", "% of peak",
            "numpy/ours", "torch/ours"]
    if compare:
        head.append("old/new")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (case, device), impls in sorted(by_case.items()):
        ours = impls.get("ours")
        if ours is None:
            continue
        t = ours["median"]
        gflops = ours["flops"] / t / 1e9 if ours["flops"] else None
        gbs = ours["bytes"] / t / 1e9 if ours["bytes"] else None
        if gflops is not None and peak:
            frac = f"{100 * gflops / peak:.0f}% of {peak:.0f} GFLOP/s"
        elif gbs is not None and bw:
            frac = f"{100 * gbs / bw:.0f}% of {bw:.0f} GB/s"
        else:
            frac = ""

        def ratio(impl):
            other = impls.get(impl)
            return f"{other['median'] / t:.2f}" if other else ""

        cells = [case, ours["shape"], device, f"{1e3 * t:.3f}",
                 f"{gflops:.1f}" if gflops is not None else "",
                 f"{gbs:.1f}" if gbs is not None else "", frac, ratio("numpy"), ratio("torch")]
        if compare:
            o = old.get((case, device))
            cells.append(f"{o['median'] / t:.2f}" if o else "")
        lines.append("| " + " | ".join(cells) + " |")
    roofs = []
    if peak:
        roofs.append(f"sgemm peak {peak:.1f} GFLOP/s")
    if bw:
        roofs.append(f"copy bandwidth {bw:.1f} GB/s")
    if roofs:
        lines.append("")
        lines.append("Measured in the same run: " + ", ".join(roofs) + ".")
    return "\n".join(lines)


def regressions(rows, compare, threshold=1.3):
    """Cases whose median grew by more than ``threshold`` times against the old run."""
    old = {(r["case"], r["device"]): r for r in compare if r["impl"] == "ours"}
    worse = []
    for r in rows:
        key = (r["case"], r["device"])
        if r["impl"] == "ours" and key in old and r["median"] > threshold * old[key]["median"]:
            worse.append((key[0], key[1], old[key]["median"], r["median"]))
    return worse


def roofline(rows, path):
    """Arithmetic intensity against achieved GFLOP/s, with the measured roofs, as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed (pip install '.[plot]'); no roofline plot")
        return None
    peak, bw = machine_roofs(rows)
    points = [r for r in rows if r["impl"] == "ours" and r["flops"] and r["bytes"]]
    fig, ax = plt.subplots(figsize=(7, 5))
    if points:
        ai = [r["flops"] / r["bytes"] for r in points]
        perf = [r["flops"] / r["median"] / 1e9 for r in points]
        ax.scatter(ai, perf, zorder=3)
        for r, x, y in zip(points, ai, perf):
            ax.annotate(r["case"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        lo, hi = min(ai) / 4, max(ai) * 4
    else:
        lo, hi = 0.05, 500.0
    if peak and bw:
        import numpy as np
        xs = np.logspace(np.log10(lo), np.log10(hi), 200)
        ax.plot(xs, np.minimum(peak, bw * xs), "k--",
                label=f"roof: {bw:.0f} GB/s, {peak:.0f} GFLOP/s")
        ax.legend()
        perfs = [r["flops"] / r["median"] / 1e9 for r in points] + [peak, bw * lo]
        ax.set_ylim(min(perfs) / 2, max(perfs) * 2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Roofline")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--compare", metavar="OLD.json", help="an earlier run to compare with")
    parser.add_argument("--plot", metavar="PNG", help="where to write the roofline plot "
                        "(default: next to RESULTS, with .png)")
    parser.add_argument("--threshold", type=float, default=1.3,
                        help="slow-down factor reported as a regression (default 1.3)")
    args = parser.parse_args(argv)
    rows, machine = load(args.results)
    old = load(args.compare)[0] if args.compare else None
    cpu = machine.get("cpu", {}).get("brand_raw") if isinstance(machine.get("cpu"), dict) else None
    if cpu:
        print(f"Machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} cores\n")
    print(table(rows, old))
    status = 0
    if old is not None:
        worse = regressions(rows, old, args.threshold)
        print()
        if worse:
            print(f"Regressions (slower by more than {args.threshold}x):")
            for case, device, t_old, t_new in worse:
                print(f"- {case} [{device}]: {1e3 * t_old:.3f} ms -> {1e3 * t_new:.3f} ms")
            status = 1
        else:
            print(f"No regression over {args.threshold}x.")
    plot = roofline(rows, args.plot or str(Path(args.results).with_suffix(".png")))
    if plot:
        print(f"\nRoofline plot: {plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())

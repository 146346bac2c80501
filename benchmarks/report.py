"""Turn pytest-benchmark JSON into a Markdown table and a roofline plot.

    python -m pytest benchmarks/ --benchmark-only --benchmark-json=RESULTS.json
    python benchmarks/report.py RESULTS.json [--compare OLD.json] [--plot roofline.png]

Each benchmark's ``extra_info`` may carry (see ``benchmarks/conftest.py``):

* ``case``   - what is measured, shared by the implementations of it (``"conv2d fwd vgg"``);
* ``impl``   - ``"ours"``, ``"numpy"``, ``"torch"``, or ``"peak"`` for the machine baselines;
* ``device`` - ``"cpu"`` or ``"cuda"``;  ``shape`` - a readable shape string;
* ``flops`` and/or ``bytes`` - the work of one call.

Rows are the ``ours`` entries; the ``numpy`` and ``torch`` entries of the same case become
ratio columns (their median over ours: above 1 means ours is faster), and the interquartile
range (IQR) of the timings shows how noisy each median is.  Peak entries (``case`` "sgemm"
with ``flops``, "copy" with ``bytes``) give the compute and bandwidth roofs.  The header
names the machine, the thread counts and the environment (versions, BLAS variables, load
average) that ``benchmarks/conftest.py`` stores in the JSON's ``machine_info``; ``--compare``
warns when the two runs' roofs or thread counts differ, since their ratios then measure the
machines as much as the code.

The plot has two panels: the roofline (arithmetic intensity against GFLOP/s, under the
measured roofs) for ops that record FLOPs, and achieved GB/s against the measured copy
bandwidth for the memory-bound ops (bytes only).  Points are told apart by colour and marker
in a legend beside the plot, so no two labels overlap.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Run as a script (python benchmarks/report.py), the package is found from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
            "iqr": b["stats"].get("iqr"),
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
    head = ["op", "shape", "device", "median ms", "IQR ms", "GFLOP/s", "GB/s", "% of peak",
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

        iqr = f"{1e3 * ours['iqr']:.3f}" if ours.get("iqr") is not None else ""
        cells = [case, ours["shape"], device, f"{1e3 * t:.3f}", iqr,
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


def environment(machine):
    """Lines naming the machine, the thread counts and the environment of a run."""
    cpu = machine.get("cpu") if isinstance(machine.get("cpu"), dict) else {}
    lines = []
    if cpu.get("brand_raw"):
        lines.append(f"Machine: {cpu['brand_raw']}, {cpu.get('count', '?')} cores")
    threads = machine.get("threads") or {}
    if threads:
        lines.append("Threads: " + ", ".join(f"{k} {v}" for k, v in sorted(threads.items())))
    env = machine.get("environment") or {}
    if env:
        lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in sorted(env.items())))
    return lines


def differences(machine, rows, old_machine, old_rows, tolerance=0.15):
    """Warnings where two runs' roofs (by more than ``tolerance``) or thread counts differ."""
    warnings = []
    for name, unit, new, old in zip(("sgemm peak", "copy bandwidth"), ("GFLOP/s", "GB/s"),
                                    machine_roofs(rows), machine_roofs(old_rows)):
        if new and old and abs(new / old - 1) > tolerance:
            warnings.append(f"{name} differs: {old:.0f} {unit} (old) against {new:.0f} {unit} "
                            f"(new)")
    threads, old_threads = machine.get("threads") or {}, old_machine.get("threads") or {}
    for key in sorted(set(threads) | set(old_threads)):
        if threads.get(key) != old_threads.get(key):
            warnings.append(f"{key} threads differ: {old_threads.get(key, 'not recorded')} "
                            f"(old) against {threads.get(key, 'not recorded')} (new)")
    return warnings


def _styles(n):
    markers = "os^vD<>Pph*X"
    colours = [f"C{i}" for i in range(10)]
    return [(colours[i % 10], markers[(i // 10 + i) % len(markers)]) for i in range(n)]


def roofline(rows, path):
    """The roofline and the memory-bound ops against the copy roof, as a PNG (or None)."""
    try:
        from nn import plots
        if not plots.available():
            raise ImportError
    except ImportError:
        print("report: matplotlib is not installed (pip install '.[plot]'); no roofline plot")
        return None
    import numpy as np

    peak, bw = machine_roofs(rows)
    ours = [r for r in rows if r["impl"] == "ours"]
    points = sorted((r for r in ours if r["flops"] and r["bytes"]),
                    key=lambda r: r["flops"] / r["median"], reverse=True)
    memory = sorted((r for r in ours if r["bytes"] and not r["flops"]),
                    key=lambda r: r["bytes"] / r["median"], reverse=True)
    panels = 1 + bool(memory)
    fig, axes = plots.subplots(1, panels, figsize=(7 * panels + 3, 5.5))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    if points:
        ai = [r["flops"] / r["bytes"] for r in points]
        perf = [r["flops"] / r["median"] / 1e9 for r in points]
        for r, x, y, (colour, marker) in zip(points, ai, perf, _styles(len(points))):
            ax.scatter([x], [y], color=colour, marker=marker, s=36, zorder=3,
                       label=f"{r['case']} ({100 * y / peak:.0f}%)" if peak else r["case"])
        lo, hi = min(ai) / 4, max(ai) * 4
    else:
        lo, hi = 0.05, 500.0
    if peak and bw:
        xs = np.logspace(np.log10(lo), np.log10(hi), 200)
        ax.plot(xs, np.minimum(peak, bw * xs), "k--", zorder=2,
                label=f"roof: {bw:.0f} GB/s copy, {peak:.0f} GFLOP/s sgemm")
        perfs = [r["flops"] / r["median"] / 1e9 for r in points] + [peak, bw * lo]
        ax.set_ylim(min(perfs) / 2, max(perfs) * 2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Roofline: ops that record FLOPs (% of the sgemm roof)")
    ax.grid(True, which="both", alpha=0.3)
    if points or (peak and bw):
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if memory:
        ax = axes[1]
        rates = [r["bytes"] / r["median"] / 1e9 for r in memory]
        labels = [r["case"] if str(r["shape"]) in r["case"] else f"{r['case']} {r['shape']}"
                  for r in memory]
        ypos = np.arange(len(memory))[::-1]
        ax.barh(ypos, rates, color="C0")
        ax.set_yticks(ypos)
        ax.set_yticklabels(labels, fontsize=6.5)
        if bw:
            ax.axvline(bw, color="k", ls="--", label=f"copy roof {bw:.0f} GB/s")
            for y, rate in zip(ypos, rates):
                ax.text(rate, y, f" {100 * rate / bw:.0f}%", va="center", fontsize=6.5)
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("achieved GB/s (bytes read + written / time); above the roof: the data "
                      "fit in cache")
        ax.set_title("Memory-bound ops against the bandwidth roof")
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return plots.save(fig, path, dpi=120)


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
    old, old_machine = load(args.compare) if args.compare else (None, {})
    header = environment(machine)
    if header:
        print("\n".join(header) + "\n")
    if old is not None:
        for warning in differences(machine, rows, old_machine, old):
            print(f"warning: {warning}: the old/new ratios compare the setups as well as the "
                  f"code")
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

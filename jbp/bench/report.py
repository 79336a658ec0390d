"""The results of ``jbp bench`` for people: :func:`table` (plain text) and :func:`save`.

Both take the JSON-ready dict that :func:`jbp.bench.run` returns (and ``jbp bench --json``
prints): per workload, one row per contender with its examples/s, its speed relative to
``jbp-manual`` (``jbp×`` = jbp-manual's examples/s ÷ this row's, > 1 when jbp is faster),
achieved GFLOP/s and % of the machine's measured matmul peak, and the first epoch's wall time
from fresh parameters (``~``: extrapolated from a Python loop stopped on its time budget);
then, when it was run, the time-to-accuracy list of :mod:`jbp.bench.tta`.
"""

import json
from pathlib import Path

import jbp.bench.runs as runs


def table(res):
    """The result as a plain-text table (one block per workload)."""
    lines = [
        f"jbp bench  {res['date']}  {res['machine']['cpu']} ({res['machine']['cores']} cores, "
        f"{res['machine']['device']}), jax {res['machine']['jax']}, {res['dtype']}",
        f"data: {res['data']} ({res['n_examples']} examples)   matmul peak ({res['peak_matmul']}):"
        f" {res['peak_gflops']:.0f} GFLOP/s   best of {res['repeats']} epochs, round-robin",
        "jbp× = jbp-manual's examples/s ÷ this row's (> 1: jbp is faster)",
    ]
    if res.get("skipped"):
        lines.append(f"skipped (not importable): {', '.join(res['skipped'])}")
    head = f"{'contender':<14}{'examples/s':>12}{'jbp×':>7}{'GFLOP/s':>9}{'% peak':>8}{'1st epoch s':>13}"
    for wl in res["workloads"].values():
        n = wl.get("n_examples", res["n_examples"])
        label = wl["label"] + (f"  ({n} examples)" if n != res["n_examples"] else "")
        lines += ["", label, head, "-" * len(head)]
        for r in wl["results"]:
            if "error" in r:
                lines.append(f"{r['contender']:<14}  failed: {r['error'][:60]}")
                continue
            ratio = "-" if r["vs_jbp"] is None else f"{r['vs_jbp']:.2f}"
            first = ("~" if r["first_epoch_estimated"] else "") + f"{r['first_epoch_s']:.2f}"
            lines.append(
                f"{r['contender']:<14}{r['examples_per_s']:>12,.0f}{ratio:>7}"
                f"{r['gflops']:>9.1f}{r['pct_peak']:>8.1f}{first:>13}"
            )
    if res.get("time_to_accuracy"):
        lines += ["", "time to accuracy (Fashion-MNIST, wall s from fresh params, compile incl.)"]
        for r in res["time_to_accuracy"]:
            if "error" in r:
                lines.append(f"  {r['name']:<28} failed: {r['error'][:60]}")
                continue
            lines.append(
                f"  {r['name']:<28} {r['seconds']:>6.2f} s   test accuracy {r['test_accuracy']:.4f}"
                f"   {r['recipe']}"
            )
    lines += runs.table(res)
    return "\n".join(lines)


def check_out(out_dir):
    """Make ``out_dir`` if needed; :class:`jbp.util.PathError` if it cannot hold the results
    (a file, under a file, not writable) — checked before the benchmark runs."""
    from jbp.rundir import RunDir

    RunDir(out_dir)  # the run folder's checks: a folder, created, writable


def save(res, out_dir, *, on_error=None):
    """Write ``bench.json`` and ``bench.png`` (examples/s bars per workload) to ``out_dir``.

    Returns both paths. The chart is best-effort with ``on_error``: if it cannot be written,
    ``on_error(message)`` is called and its path is ``None``; ``bench.json`` must be written
    (an ``OSError`` naming it otherwise).
    """
    out = Path(out_dir)
    check_out(out)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    try:
        _chart(res, out / "bench.png")
    except Exception as e:  # noqa: BLE001 - a chart never costs the benchmark its result
        if on_error is None:
            raise
        from jbp.util import os_message

        png = out / "bench.png"
        on_error(os_message(e, png) if isinstance(e, OSError) else f"{png}: {e}")
        return out / "bench.json", None
    return out / "bench.json", out / "bench.png"


def _chart(res, path):
    """``bench.png``: examples/s bars per workload, labelled with the % of matmul peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = list(res["workloads"].values())
    fig, axes = plt.subplots(1, len(wls), figsize=(4.5 * len(wls), 4), squeeze=False)
    for ax, wl in zip(axes[0], wls, strict=True):
        rows = [r for r in wl["results"] if "error" not in r]
        names = [r["contender"] for r in rows]
        vals = [r["examples_per_s"] for r in rows]
        colors = ["tab:red" if n.startswith("jbp") else "tab:gray" for n in names]
        ax.barh(names[::-1], vals[::-1], color=colors[::-1])
        for i, r in enumerate(rows[::-1]):
            ax.text(r["examples_per_s"], i, f" {r['pct_peak']:.0f}%", va="center", fontsize=8)
        ax.set_title(wl["label"], fontsize=8)
        thousands = max(vals, default=0) >= 20000  # "3k, 3k" says nothing on a small axis
        ax.xaxis.set_major_formatter(
            lambda v, _, k=thousands: f"{v / 1000:.0f}k" if k else f"{v:,.0f}"
        )
        ax.set_xlabel("examples/s (label: % of matmul peak)")
    fig.suptitle(
        f"jbp bench {res['date'][:10]}, {res['machine']['cpu']}, {res['data']}, "
        f"peak {res['peak_gflops']:.0f} GFLOP/s",
        fontsize=9,
    )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)

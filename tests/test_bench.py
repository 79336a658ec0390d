"""Smoke test of ``jbp bench``: the table, JSON and chart have the promised structure.

Benchmarks are not tests: nothing here asserts a speed. ``jbp bench`` runs in a subprocess
(a fresh JAX in float32, as users run it, not the suite's float64 configuration).
"""

import json
import subprocess
import sys

import pytest

from jbp import bench


def _run_cli(*argv, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "jbp", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_workload_flops_count_weights_only():
    w = bench.WORKLOADS["b"]
    assert w.sizes == (784, 256, 256, 10) and w.batch == 128 and w.optimizer == "adam"
    assert w.weights == 784 * 256 + 256 * 256 + 256 * 10


def test_quick_bench_table_json_and_chart(tmp_path):
    contenders = ["jbp-manual", "jax-scan", "numpy", "torch"]
    r = _run_cli(
        "--quick",
        "--workloads",
        "a,b",
        "--contenders",
        ",".join(contenders),
        "--examples",
        "256",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["data"] in ("fashion-mnist", "random") and res["n_examples"] == 256
    assert res["peak_gflops"] > 0 and res["dtype"] == "float32"
    ran = [c for c in contenders if c not in res["skipped"]]
    assert set(res["skipped"]) <= {"torch"}
    assert list(res["workloads"]) == ["a", "b"]
    for name, wl in res["workloads"].items():
        w = bench.WORKLOADS[name]
        assert wl["sizes"] == list(w.sizes) and wl["weights"] == w.weights
        assert [r["contender"] for r in wl["results"]] == ran
        for row in wl["results"]:
            assert "error" not in row, row
            eps = row["examples_per_s"]
            assert eps > 0 and row["first_epoch_s"] > 0
            assert row["gflops"] == pytest.approx(6 * w.weights * eps / 1e9)
            assert row["pct_peak"] == pytest.approx(100 * row["gflops"] / res["peak_gflops"])
        ref = wl["results"][0]
        assert ref["vs_jbp"] == pytest.approx(1.0)
        for row in wl["results"][1:]:
            assert row["vs_jbp"] == pytest.approx(ref["examples_per_s"] / row["examples_per_s"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["workloads"].keys() == res["workloads"].keys()
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = bench.table(res)
    for word in ("examples/s", "jbp×", "GFLOP/s", "% peak", *ran):
        assert word in text


def test_bad_workload_is_one_line_exit_2():
    r = _run_cli("--workloads", "z", timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--workloads" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_cnn_contenders_train_the_same_network():
    """From the shared parameters every CNN contender computes the same logits' argmax."""
    import jax.numpy as jnp
    import numpy as np

    from jbp.bench import cnn as bench_cnn
    from jbp.bench import dense as bench_baselines

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 784), dtype=np.float32), rng.integers(0, 10, 64).astype(np.int32)
    w = bench_cnn.WORKLOAD._replace(batch=32)
    params = bench_cnn.init_params(w, 0)
    names = [c for c in bench_cnn.CONTENDERS if c != "torch" or bench_baselines.torch_available()]
    acc = {n: bench_cnn.make_runner(n, w, x, y, params, jnp.float32).accuracy(x, y) for n in names}
    assert len(set(acc.values())) == 1, acc
    assert w.weights == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 9 * 32 + 7 * 7 * 64 * 128 + 128 * 10


def test_quick_cnn_bench(tmp_path):
    r = _run_cli(
        "--quick", "--workloads", "cnn", "--contenders", "jbp-manual,jax-conv-jit",
        "--examples", "256", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    rows = res["workloads"]["cnn"]["results"]
    assert [row["contender"] for row in rows] == ["jbp-manual", "jax-conv-jit"]
    assert all(row["examples_per_s"] > 0 and "error" not in row for row in rows)


def test_an_unusable_out_exits_2_before_the_benchmark(tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    argv = ["--quick", "--workloads", "a", "--contenders", "jbp-manual", "--compile-cache", "off"]
    r = _run_cli(*argv, "--out", str(f), timeout=60)
    assert r.returncode == 2 and r.stdout == ""  # nothing was timed
    assert (
        r.stderr.strip() == f"jbp bench: {f}: is a file, not a folder (--out names the run folder)"
    )
    assert f.read_text() == "mine"


def test_a_chart_that_cannot_be_written_keeps_the_result(tmp_path):
    from jbp.bench import report

    (tmp_path / "bench.png").mkdir()  # a folder where the chart goes
    row = {"contender": "jbp-manual", "examples_per_s": 10.0, "pct_peak": 1.0}
    res = {"workloads": {"a": {"label": "a", "results": [row]}}, "date": "2024-01-01",
           "machine": {"cpu": "x"}, "data": "random", "peak_gflops": 1.0}  # fmt: skip
    warned = []
    paths = report.save(res, tmp_path, on_error=warned.append)
    assert paths == (tmp_path / "bench.json", None)
    assert json.loads((tmp_path / "bench.json").read_text()) == res
    assert len(warned) == 1 and "bench.png" in warned[0]


def test_data_too_large_for_memory_exits_2_before_the_benchmark():
    r = _run_cli("--examples", "2000000000", "--compile-cache", "off", timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "--examples 2000000000: the data need about 12.5 TB" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_startup_runs_cold_then_warm():
    from jbp.bench import runs
    from jbp.config import RunConfig

    cfg = RunConfig(data="digits", epochs=2)
    rows = runs.startup([("digits", cfg, True), ("plain", cfg, False)], log=lambda *a: None)
    cold, warm, plain_cold, plain_warm = rows
    assert (cold["cache"], warm["cache"]) == ("cold", "warm")
    assert cold["test_accuracy"] == warm["test_accuracy"]  # the same run, compiled or read back
    assert plain_warm["test_accuracy"] == warm["test_accuracy"]  # with or without --out
    for row in rows:  # without --out the epoch seconds come from the printed lines
        assert 0 < row["first_epoch_s"] < row["wall_s"] and row["other_epochs_s"] > 0
    text = "\n".join(runs.table({"startup": rows}))
    assert "cold" in text and "warm" in text

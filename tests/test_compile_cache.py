"""jbp.compile_cache: a second process reuses the compiled programs; damage is never fatal."""

import json
import os
import subprocess
import sys

from jbp import compile_cache

SCRIPT = """
import json, sys, jax, jbp, jbp.compile_cache as cc
cc.enable(sys.argv[1])
with cc.HitCounter() as hits:
    state, _ = jbp.fit(jbp.MLP((64, 8, 10)), jbp.optim.adam(1e-2), jbp.data.load("digits"),
                       batch_size=64, epochs=2, key=jax.random.key(0))
print(json.dumps({"hits": hits.hits, "misses": hits.misses,
                  "sha": jbp.params_sha256(state.params)}))
"""


def _run(cache, **env):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, **env})  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    first, _ = _run(tmp_path)
    assert first["misses"] > 0  # compiled, and written (a few repeats already hit)
    assert any(p.name.endswith("-cache") for p in tmp_path.iterdir())
    second, _ = _run(tmp_path)
    assert second["hits"] >= first["misses"] and second["misses"] == 0
    assert second["sha"] == first["sha"]


def test_a_damaged_cache_entry_is_compiled_afresh(tmp_path):
    first, _ = _run(tmp_path)
    for p in tmp_path.iterdir():
        if p.name.endswith("-cache"):
            p.write_bytes(b"not a compiled program")
    again, err = _run(tmp_path)
    assert again["sha"] == first["sha"]
    assert "damaged compilation cache entry was ignored" in err and "Traceback" not in err
    assert err.count("damaged compilation cache entry") == 1, err  # one line, not one per entry
    assert f"delete {tmp_path} to clear it" in err


def test_off_is_off_even_where_jax_would_turn_its_own_cache_on(tmp_path):
    filled, _ = _run(tmp_path)
    assert filled["misses"] > 0
    off, _ = _run("off", JAX_COMPILATION_CACHE_DIR=str(tmp_path))
    assert (off["hits"], off["misses"]) == (0, 0) and off["sha"] == filled["sha"]


def test_where_the_cache_goes(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert compile_cache.resolve() == tmp_path / "xdg" / "jbp" / "jax"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.resolve() == tmp_path / "env"
    assert compile_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"  # the flag wins
    for off in ("off", "0", "none"):
        assert compile_cache.resolve(off) is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve() is None
    monkeypatch.setenv(compile_cache.ENV, "")  # empty: unset, as JAX reads its own variable
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", " ")
    if sys.platform.startswith("linux"):
        assert compile_cache.resolve() == tmp_path / "xdg" / "jbp" / "jax"


def test_an_unwritable_cache_folder_runs_without_it(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert compile_cache.enable(blocker / "cache") is None
    assert "running without it" in capsys.readouterr().err

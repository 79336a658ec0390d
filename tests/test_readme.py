"""The README's "Write your own layer" example runs as written: check_layer passes, fit trains."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def _example():
    text = README.read_text()
    section = text.split("## Write your own layer", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_write_your_own_layer_example(capsys):
    scope = {}
    exec(compile(_example(), "README.md", "exec"), scope)  # noqa: S102 - our own README
    report, history = scope["report"], scope["history"]
    assert report.ok and {r.name for r in report.rows} == {"g", "x"}
    assert all(r.rel_vjp < 1e-10 and r.rel_fd < 1e-7 for r in report.rows)
    assert history[-1]["test_accuracy"] > 0.9
    assert "PASS" in capsys.readouterr().out


def test_the_run_configuration_example():
    text = README.read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    scope = {}
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    r, history = scope["r"], scope["history"]
    assert r.config.schedule_options == (("factor", 0.5), ("every_epochs", 10))
    assert len(history) == r.epochs == 30 and history[-1]["test_accuracy"] > 0.9

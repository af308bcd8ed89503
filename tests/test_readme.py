"""The README's Python example runs as written and reaches the accuracy it claims."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_example_trains_saves_and_reloads(tmp_path, monkeypatch, capsys):
    blocks = [block for block in _python_blocks() if "model.fit(" in block]
    assert len(blocks) == 1, "the README should hold one training example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)

    assert namespace["accuracy"] > 0.9  # the README says "about 0.98"
    model, same, x_test = namespace["model"], namespace["same"], namespace["x_test"]
    assert (tmp_path / "digits.cnnlab").is_file()
    assert (same.predict(x_test) == model.predict(x_test)).all()
    assert "Total params" in capsys.readouterr().out

"""The README's Python example runs as written and reaches the accuracy it claims."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _run(block: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


def _training_examples() -> list[str]:
    blocks = [block for block in _python_blocks() if "model.fit(" in block]
    assert len(blocks) == 2, "the README should hold two training examples"
    return blocks


def test_readme_first_example_learns_bars_on_data_it_makes(tmp_path, monkeypatch):
    namespace = _run(_training_examples()[0], tmp_path, monkeypatch)
    assert namespace["accuracy"] >= 0.95  # chance is 0.5; the README reports its own figure


def test_readme_digits_example_trains_saves_and_reloads(tmp_path, monkeypatch, capsys):
    namespace = _run(_training_examples()[1], tmp_path, monkeypatch)
    assert namespace["accuracy"] > 0.9  # the README says "about 0.98"
    model, same, x_test = namespace["model"], namespace["same"], namespace["x_test"]
    assert (tmp_path / "digits.cnnlab").is_file()
    assert (same.predict(x_test) == model.predict(x_test)).all()
    assert "Total params" in capsys.readouterr().out


def test_readme_functional_examples_build_the_books_mlp_and_a_residual_block(tmp_path, monkeypatch):
    blocks = [block for block in _python_blocks() if "models.Model(" in block]
    assert len(blocks) == 2
    namespace = _run("\n".join(blocks), tmp_path, monkeypatch)
    assert namespace["model"].count_params() == 646_260  # the book's MLP
    assert namespace["block"].output_shape == (None, 32, 32, 16)
    add = [layer for layer in namespace["block"].layers if type(layer).__name__ == "Add"]
    assert len(add) == 1

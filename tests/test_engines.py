"""The two engines: the plain ops of cnnlab.nn ("reference") and the fast ones of
cnnlab.engine ("fast"). The fast functions stand in for the plain ones one at a time, whole
models train alike on both, the reference engine runs on cnnlab.nn alone, and the switch
switches."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cnnlab
from cnnlab import backend, engine, layers, nn, zoo
from cnnlab.cli import main
from cnnlab.engine import subnormals

SRC = Path(cnnlab.__file__).parent


def test_importing_cnnlab_nn_loads_numpy_and_nothing_else():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import cnnlab.nn\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.split()
    assert "cnnlab.nn.conv" in loaded and "numpy" in loaded
    outside_stdlib = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names)
    assert outside_stdlib == {"cnnlab", "numpy"}
    assert [m for m in loaded if m.startswith("cnnlab")] == ["cnnlab"] + sorted(
        m for m in loaded if m.startswith("cnnlab.nn")
    )


def test_cnnlab_nn_imports_nothing_of_cnnlab_but_itself():
    for path in (SRC / "nn").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")) and "cnnlab" in line:
                assert line.startswith("from cnnlab.nn"), f"{path.name}: {line}"


@pytest.mark.parametrize("fast", engine.FAST, ids=lambda f: f.__name__)
def test_each_fast_function_stands_in_for_the_plain_one_of_its_name(fast):
    """Same name, the plain function's arguments first (names, order, defaults), any extra
    one keyword-only with a default; and its docstring names the function it replaces."""
    plain = getattr(nn, fast.__name__)
    assert fast is not plain

    def described(function):
        return [
            (p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()
        ]

    theirs = described(plain)
    assert described(fast)[: len(theirs)] == theirs
    for extra in list(inspect.signature(fast).parameters.values())[len(theirs) :]:
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY
        assert extra.default is not inspect.Parameter.empty
    qualified = f"{plain.__module__}.{plain.__name__}"
    short = f"~{plain.__module__}.{plain.__name__}"
    assert qualified in fast.__doc__ or short in fast.__doc__, fast.__doc__


def test_the_switch_gives_each_engine_its_functions():
    with backend.engine("reference"):
        ops = backend.ops()
        assert all(getattr(ops, name) is getattr(nn, name) for name in nn.__all__)
        assert not backend.fuses()
    with backend.engine("fast"):
        ops = backend.ops()
        assert all(getattr(ops, f.__name__) is f for f in engine.FAST)
        assert ops.max_pool_forward is nn.max_pool_forward  # no fast form: the plain one
        assert backend.fuses()


def test_an_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(
        ValueError, match=r"`engine` must be one of \('reference', 'fast', 'torch'\)"
    ):
        cnnlab.set_engine("gpu")
    code = "import cnnlab; print(cnnlab.get_engine())"
    env = {**os.environ, "CNNLAB_ENGINE": "reference"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "reference"
    env["CNNLAB_ENGINE"] = "quick"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert (
        "`CNNLAB_ENGINE` must be one of ('reference', 'fast', 'torch'), got 'quick'" in done.stderr
    )


def _copies(model_name: str, dtype: str, optimizer):
    """The book's model twice, with the same weights and dropout masks, compiled alike."""
    cnnlab.set_random_seed(0)
    models = [zoo.get(model_name) for _ in range(2)]
    for model in models:
        model.set_weights(models[0].get_weights())
        for layer in model.layers:
            if layer.rng is not None:
                layer.rng = np.random.default_rng(3)
        model.compile(optimizer(), "sparse_categorical_crossentropy")
    return (models, *_images_and_labels(dtype))


def _images_and_labels(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """40 random images of CIFAR-10's shape and their labels, the same every call."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (40, 32, 32, 3)).astype(dtype)
    return x, rng.integers(0, 10, 40)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    cnnlab.set_floatx(request.param)
    yield request.param
    cnnlab.set_floatx("float32")


TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
def test_the_book_models_train_alike_on_both_engines(model_name, dtype):
    """Five Adam steps of the book's CNN and MLP on CIFAR-10's shapes: the weights agree to
    1e-5 (float32) or 1e-12 (float64) of their size.

    With ``epsilon=1e-3``: Adam divides each gradient by its own running size, so where a
    gradient is about as small as ``epsilon`` (1e-7 by default), two correct sums of it
    that round apart by a millionth in float32 step apart by a good part of the learning
    rate; and a conv's bias before batch norm has a gradient that is rounding noise alone
    (batch norm takes the mean out), which Adam turns into steps of the learning rate. A
    larger epsilon makes each step follow the gradient's value; the next test holds the
    gradients themselves together under the defaults.
    """
    models, x, y = _copies(model_name, dtype, lambda: cnnlab.optimizers.Adam(1e-3, epsilon=1e-3))
    start = models[0].get_weights()
    for model, name in zip(models, ("fast", "reference"), strict=True):
        with backend.engine(name):
            for step in range(5):
                model.train_step(x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8])
    fast, plain = (model.get_weights() for model in models)
    for a, b in zip(fast, plain, strict=True):
        assert a.dtype == b.dtype == dtype
        assert np.max(np.abs(a - b)) <= TOLERANCE[dtype] * max(1.0, float(np.max(np.abs(b))))
    moved = [np.max(np.abs(b - w0)) for b, w0 in zip(plain, start, strict=True)]
    assert sorted(moved)[len(moved) // 2] > 1e-3  # the steps moved most weights


class _Float32Draws:
    """A generator that draws in float32 whatever dtype it is asked for: the dropout masks of
    a float32 run, for the same model in float64."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def random(self, shape, dtype):
        return self.rng.random(shape, dtype=np.float32).astype(dtype)


def _one_step_gradients(model_name: str, dtype: str, engine_name: str) -> list:
    """Each layer's gradients after one step of the book's Adam, from float32 weights and
    images, with the dropout masks of a float32 run."""
    cnnlab.set_floatx("float32")
    cnnlab.set_random_seed(0)
    weights = zoo.get(model_name).get_weights()  # the first of _copies' twins
    x, y = _images_and_labels("float32")
    cnnlab.set_floatx(dtype)
    try:
        model = zoo.get(model_name)
        model.set_weights([w.astype(dtype) for w in weights])
        for layer in model.layers:
            if layer.rng is not None:
                layer.rng = _Float32Draws(3)
        model.compile(cnnlab.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        with backend.engine(engine_name):
            model.train_step(x[:8].astype(dtype), y[:8])
    finally:
        cnnlab.set_floatx("float32")
    return [(layer, {n: layer.grads[n] for n in layer.trainable_names}) for layer in model.layers]


@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
def test_the_book_models_get_the_same_gradients_on_both_engines(model_name, dtype):
    """One step of the book's Adam: in float64 every gradient of the two engines agrees to
    1e-12 of the largest of its weight's; in float32 each engine's agrees with float64's to
    1e-5 (two float32 engines that round apart, each some 3e-6 off, can differ by more than
    either is wrong). Except the gradients of the conv and dense biases right before a batch
    norm, which are rounding noise (their true value is zero) on both."""
    truth = _one_step_gradients(model_name, "float64", "reference")
    engines = ("fast",) if dtype == "float64" else ("fast", "reference")
    for engine_name in engines:
        grads = _one_step_gradients(model_name, dtype, engine_name)
        for i, ((layer, mine), (_, exact)) in enumerate(zip(grads, truth, strict=True)):
            after = grads[i + 1][0] if i + 1 < len(grads) else None
            for name, a in mine.items():
                assert a.dtype == dtype
                b = exact[name]
                if name == "bias" and isinstance(after, layers.BatchNormalization):
                    # Noise, far below the gradient of the batch norm's own shift.
                    noise = np.max(np.abs(a))
                    assert noise < 100 * TOLERANCE[dtype] * np.max(np.abs(grads[i + 1][1]["beta"]))
                    continue
                error = np.max(np.abs(a.astype(np.float64) - b))
                assert error <= TOLERANCE[dtype] * float(np.max(np.abs(b))), (
                    engine_name,
                    layer.name,
                    name,
                )


def _engine_code_called(run) -> set[str]:
    """The files of cnnlab.engine and cnnlab.fusion whose functions run while ``run()`` does,
    on any thread."""
    seen: set[str] = set()
    watched = (str(SRC / "engine"), str(SRC / "fusion.py"))

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(watched):
            seen.add(Path(frame.f_code.co_filename).name)

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return seen


@pytest.mark.skipif(not subnormals.X86, reason="MXCSR's FTZ and DAZ bits are x86's")
def test_the_fast_engine_reads_subnormal_floats_as_zeros_in_a_step_and_only_there():
    """As TensorFlow's CPU kernels (and so Keras) do; the reference engine keeps them, and
    the user's NumPy after a step is as it was."""
    model = cnnlab.Sequential([layers.Input((2,)), layers.Dense(1, use_bias=False)])
    model.layers[0].weights["kernel"][...] = 1.0
    x = np.array([[1e-38, 0.0]], np.float32)  # a subnormal float32 and a zero
    with backend.engine("reference"):
        assert model.predict(x, verbose=0)[0, 0] == np.float32(1e-38)
    with backend.engine("fast"):
        assert model.predict(x, verbose=0)[0, 0] == 0.0
    assert np.float32(1e-38) * np.float32(0.5) > 0


def test_the_reference_engine_runs_a_whole_run_on_cnnlab_nn_alone(tmp_path):
    """Train, resume, evaluate, predict, the report's pictures: with --engine reference no
    function of cnnlab.engine or cnnlab.fusion runs (with the fast engine, they do)."""
    from PIL import Image

    quick = ["--model", "cnn", "--dataset", "digits", "--limit", "64", "--batch-size", "16"]
    image = tmp_path / "seven.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)

    def commands(engine_name: str, out: Path) -> None:
        for args in (
            ["train", *quick, "--epochs", "1", "--quiet", "--out", out],
            ["train", "--resume", out, "--epochs", "2", "--quiet"],
            ["evaluate", out, "--limit", "32"],
            ["predict", out, image],
        ):
            result = CliRunner().invoke(main, [*map(str, args), "--engine", engine_name])
            assert result.exit_code == 0, result.output

    plain = _engine_code_called(lambda: commands("reference", tmp_path / "plain"))
    assert plain == set()
    assert (tmp_path / "plain" / "report.html").is_file()
    config = (tmp_path / "plain" / "config.json").read_text()
    assert '"engine": "reference"' in config
    fast = _engine_code_called(lambda: commands("fast", tmp_path / "fast"))
    assert {"conv.py", "batchnorm.py", "parallel.py", "fusion.py"} <= fast

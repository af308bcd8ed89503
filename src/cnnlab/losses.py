"""Loss objects with Keras names: the mean of the per-example loss over the batch."""

from __future__ import annotations

import numpy as np

from cnnlab import backend


class Loss:
    name = "loss"

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return self.value_and_grad(y_true, y_pred)[0]

    def value_and_grad(self, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, np.ndarray]:
        """The loss and its gradient with respect to ``y_pred``."""
        self.check_labels(y_true, y_pred.shape)
        return self.checked_value_and_grad(y_true, y_pred, self.from_logits)

    def from_logits_value_and_grad(self, y_true, logits) -> tuple[float, np.ndarray]:
        """The same loss, computed from the logits before a softmax: stable for large inputs."""
        self.check_labels(y_true, logits.shape)
        return self.checked_value_and_grad(y_true, logits, True)

    @staticmethod
    def checked_value_and_grad(y_true, y_pred, from_logits: bool) -> tuple[float, np.ndarray]:
        """:meth:`value_and_grad` of labels already checked (:meth:`check_labels`), from the
        predicted probabilities or, with ``from_logits``, the logits."""
        if from_logits:
            return backend.ops().crossentropy_from_logits(y_pred, y_true)
        return backend.ops().crossentropy_from_probs(y_pred, y_true)

    def check_labels(self, y_true: np.ndarray, shape: tuple[int, ...]) -> None:
        """Raise a ValueError unless ``y_true`` are labels this loss takes for predictions of
        ``shape`` ``(N, K)``."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": self.name, "from_logits": self.from_logits}


class CategoricalCrossentropy(Loss):
    """Cross-entropy between one-hot labels ``(N, K)`` and predicted probabilities ``(N, K)``."""

    name = "categorical_crossentropy"

    def check_labels(self, y_true, shape):
        if y_true.shape != tuple(shape):
            raise ValueError(
                f"categorical_crossentropy expects one-hot labels of shape {tuple(shape)}, "
                f"got shape {y_true.shape}; for integer labels use "
                "sparse_categorical_crossentropy"
            )


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy between integer labels ``(N,)`` and predicted probabilities ``(N, K)``."""

    name = "sparse_categorical_crossentropy"

    def check_labels(self, y_true, shape):
        if y_true.shape != tuple(shape[:1]):
            raise ValueError(
                f"sparse_categorical_crossentropy expects integer labels of shape "
                f"{tuple(shape[:1])}, got shape {y_true.shape}; for one-hot labels use "
                "categorical_crossentropy"
            )
        if y_true.dtype.kind == "f" and not np.array_equal(y_true, np.round(y_true)):
            first = y_true[y_true != np.round(y_true)][0]
            raise ValueError(
                f"sparse_categorical_crossentropy expects whole-number class labels, got {first}"
            )
        if y_true.size and (y_true.min() < 0 or y_true.max() >= shape[1]):
            raise ValueError(
                f"sparse_categorical_crossentropy expects labels in [0, {shape[1]}), "
                f"got values from {y_true.min()} to {y_true.max()}"
            )


_BY_NAME = {cls.name: cls for cls in (CategoricalCrossentropy, SparseCategoricalCrossentropy)}


def get(loss: str | Loss | dict) -> Loss:
    """A loss from its name, its config, or the object itself."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, dict):
        return get(loss["name"]).__class__(from_logits=loss.get("from_logits", False))
    if loss not in _BY_NAME:
        raise ValueError(f"Unknown loss {loss!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[loss]()

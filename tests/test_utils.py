"""cnnlab.utils.to_categorical: Keras 3's one-hot encoding, with clear errors for bad labels."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.utils import to_categorical


def test_one_hot_rows_in_float32():
    encoded = to_categorical(np.array([2, 0, 1, 2]), num_classes=4)
    assert encoded.dtype == np.float32 and encoded.shape == (4, 4)
    assert encoded.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_num_classes_defaults_to_the_largest_label_plus_one():
    assert to_categorical([0, 3]).shape == (2, 4)
    assert to_categorical([1, 1]).tolist() == [[0, 1], [0, 1]]
    assert to_categorical([4], num_classes=np.int64(6)).tolist() == [[0, 0, 0, 0, 1, 0]]


def test_a_trailing_axis_of_one_is_dropped_as_keras_does():
    y = np.array([[3], [0], [9]], np.uint8)  # CIFAR-10's labels from cifar10.load_data()
    encoded = to_categorical(y, 10)
    assert encoded.shape == (3, 10) and encoded.dtype == np.float32
    assert np.array_equal(encoded, to_categorical(y[:, 0], 10))
    assert encoded.argmax(axis=1).tolist() == [3, 0, 9]
    # More axes, as in Keras: (..., 1) and (...) both give (..., num_classes).
    grid = np.array([[0, 1, 2], [2, 1, 0]])
    assert to_categorical(grid[..., None], 3).shape == (2, 3, 3)
    assert np.array_equal(to_categorical(grid, 3), to_categorical(grid[..., None], 3))
    assert to_categorical(grid, 3)[1, 0].tolist() == [0, 0, 1]
    assert to_categorical([[1]], 2).tolist() == [[0, 1]]  # (1, 1) -> (1, 2)
    assert to_categorical(2, 3).tolist() == [0, 0, 1]  # a single label, as Keras gives it


def test_labels_of_any_integer_dtype_or_whole_floats_or_a_list():
    expected = to_categorical(np.array([1, 0, 2], np.int64), 3)
    for y in (
        np.array([1, 0, 2], np.uint8),
        np.array([1, 0, 2], np.int32),
        np.array([1.0, 0.0, 2.0], np.float32),
        [1, 0, 2],
        (1, 0, 2),
    ):
        assert np.array_equal(to_categorical(y, 3), expected), y


def test_empty_labels_with_num_classes():
    encoded = to_categorical(np.array([], np.int64), 5)
    assert encoded.shape == (0, 5) and encoded.dtype == np.float32


def test_input_is_left_alone():
    y = np.array([[1], [0]])
    before = y.copy()
    to_categorical(y)
    assert np.array_equal(y, before)


def test_negative_labels_are_refused_naming_where():
    with pytest.raises(ValueError, match=r"labels >= 0, got -1 at y\[2\]"):
        to_categorical([0, 1, -1, 2], 3)
    with pytest.raises(ValueError, match=r"got -3 at y\[1, 0\]"):
        to_categorical(np.array([[0], [-3]]))


def test_labels_not_below_num_classes_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"in \[0, 3\) for num_classes=3, got 5 at y\[1\]"):
        to_categorical([0, 5, 1], 3)
    with pytest.raises(ValueError, match=r"num_classes=10, got 10 at y\[2, 0\]"):
        to_categorical(np.array([[9], [0], [10]], np.uint8), 10)


@pytest.mark.parametrize(
    ("y", "came"),
    [
        ([0, 1.5], r"got 1\.5 at y\[1\]"),
        ([0.0, float("nan")], r"got nan at y\[1\]"),
        ([float("inf")], r"got inf at y\[0\]"),
        (["cat", "dog"], "got an array of dtype <U3"),
        (np.array([1, None], dtype=object), "got an array of dtype object"),
        (np.array([1 + 0j]), "got an array of dtype complex128"),
    ],
)
def test_labels_that_are_not_integers_are_refused(y, came):
    with pytest.raises(ValueError, match=f"expects integer class labels, {came}"):
        to_categorical(y, 3)


@pytest.mark.parametrize("num_classes", [0, -2, 2.0, "3", True])
def test_num_classes_must_be_a_positive_integer(num_classes):
    with pytest.raises(ValueError, match="positive integer or None, got"):
        to_categorical([0, 1], num_classes)


def test_num_classes_cannot_be_inferred_from_no_labels():
    with pytest.raises(ValueError, match="cannot infer num_classes"):
        to_categorical([])

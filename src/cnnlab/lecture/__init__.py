"""The lecture's claims, each tested by a small study with numbers, pictures and a verdict
(``cnnlab experiment NAME``, ``cnnlab experiment all``).

Each study is a module with ``NAME``, ``TITLE``, ``CLAIM``, the ``RULE`` its verdict follows,
``run(options) -> Result`` and ``judge(...)``, the rule as a function of the numbers alone.
:mod:`cnnlab.lecture.study` holds what they share; ``docs/experiments.md`` states every rule.
"""

from __future__ import annotations

from cnnlab.lecture import (
    batchnorm,
    dropout,
    exploding,
    filters,
    mlp_vs_cnn,
    normalization,
    translation,
)

STUDIES = {
    module.NAME: module
    for module in (mlp_vs_cnn, translation, exploding, batchnorm, dropout, normalization, filters)
}

"""Outside check: scikit-learn's LabelSpreading computes the reference closed form.

LabelSpreading iterates `F <- alpha S F + (1 - alpha) Y` on the symmetric normalised graph
`S = D^-1/2 W D^-1/2` (W's diagonal ignored) and row-normalises the limit. Since
`(I - alpha S)^-1 = D^1/2 (I - alpha P)^-1 D^-1/2` with `P = D^-1 W`, its limit is
`D^1/2 closed_form(P, D^-1/2 Y, alpha)`; the row normalisation removes the `D^1/2`, so the
label distributions equal `closed_form(P, D^-1/2 Y, alpha)` with rows scaled to sum to one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference import closed_form

semi_supervised = pytest.importorskip("sklearn.semi_supervised")


@pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")
@given(
    n=st.integers(4, 40),
    classes=st.integers(2, 4),
    alpha=st.floats(0.05, 0.95),
    gamma=st.floats(0.05, 2.0),
    unlabelled=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32 - 1),
)
def test_label_spreading_is_the_closed_form_on_the_random_walk_graph(
    n, classes, alpha, gamma, unlabelled, seed
):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, 3))
    labels = rng.integers(0, classes, size=n)
    labels[rng.uniform(size=n) < unlabelled] = -1
    labels[:classes] = np.arange(classes)  # every class labelled at least once

    model = semi_supervised.LabelSpreading(
        kernel="rbf", gamma=gamma, alpha=alpha, max_iter=100_000, tol=1e-13
    ).fit(points, labels)

    squared_distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    W = np.exp(-gamma * squared_distances)
    np.fill_diagonal(W, 0.0)  # LabelSpreading's normalised Laplacian ignores self-affinity
    degree = W.sum(axis=1)
    Y = np.zeros((n, classes))
    labelled = labels >= 0
    Y[labelled, labels[labelled]] = 1.0

    F = closed_form(W / degree[:, None], Y / np.sqrt(degree)[:, None], alpha)
    expected = F / F.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.label_distributions_, expected, rtol=0, atol=1e-9)
    assert (model.transduction_ == model.classes_[expected.argmax(axis=1)]).all()

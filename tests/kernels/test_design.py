"""The scan design (kernels.design): grids and seeded space-filling designs over several coefficients."""

import numpy as np
import pytest

from kernels import design
from kernels.errors import ConfigError


def test_a_grid_is_the_product_of_its_axes_with_the_first_axis_slowest():
    d = design.grid({"C9": [-1.0, 0.0, 1.0], "dc10": [-0.5, 0.5]})
    assert d.columns == ("dc9", "dc10") and d.coefficients == ("C9_bsmumu", "C10_bsmumu")
    assert d.rows() == [[-1.0, -0.5], [-1.0, 0.5], [0.0, -0.5], [0.0, 0.5], [1.0, -0.5], [1.0, 0.5]]
    assert d.shifts(3) == {"dc9": 0.0, "dc10": 0.5}


@pytest.mark.parametrize("method", ["sobol", "lhs"])
def test_space_filling_designs_are_seeded_inside_their_box_and_fill_it(method):
    box = {"dc9": (-2.0, 1.0), "dc10": (-1.0, 1.0), "dc9p": (-1.0, 1.0), "dc10p": (-1.0, 1.0)}
    a = design.space_filling(box, 32, seed=7, method=method)
    b = design.space_filling(box, 32, seed=7, method=method)
    c = design.space_filling(box, 32, seed=8, method=method)
    assert a.points.shape == (32, 4)
    assert np.array_equal(a.points, b.points) and not np.array_equal(a.points, c.points)
    lo = np.array([v[0] for v in box.values()])
    hi = np.array([v[1] for v in box.values()])
    assert ((a.points >= lo) & (a.points <= hi)).all()
    u = (a.points - lo) / (hi - lo)
    # every axis is filled: each quarter of each axis holds about a quarter of the points
    for j in range(4):
        counts = np.histogram(u[:, j], bins=4, range=(0, 1))[0]
        assert counts.min() >= 4, (method, j, counts)
    if method == "lhs":  # one point in each of the 32 slices of every axis
        for j in range(4):
            assert sorted(np.floor(u[:, j] * 32).astype(int).tolist()) == list(range(32))
    assert a.spec == {"kind": method, "n": 32, "seed": 7, "bounds": {k: list(v) for k, v in box.items()}}


def test_one_point_in_several_coefficients_is_test_data_not_a_scan_and_is_allowed():
    assert design.grid({"dc9": [1.0], "dc10": [-1.0]}).rows() == [[1.0, -1.0]]


@pytest.mark.parametrize("make, message", [
    (lambda: design.grid({"dc9": [0.0, 1.0], "C9_bsmumu": [0.0, 1.0]}), "dc9 is listed twice"),
    (lambda: design.grid({"dc11": [0.0, 1.0]}), "unknown Wilson coefficient 'dc11'"),
    (lambda: design.grid({"dc9": [0.0, 1.0], "dc10": [0.5]}), "dc10 takes one value (0.5) at every point"),
    (lambda: design.from_points(["dc9", "dc10"], [[0.0, 0.0], [1.0, 1.0]]), "need at least 3 points"),
    (lambda: design.from_points(["dc9", "dc10"], [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]),
     "3 points spanning 1 dimension(s)"),
    (lambda: design.space_filling({"dc9": (-1, 1), "dc10": (-1, 1), "dc9p": (-1, 1)}, 3, 0), "need at least 4"),
    (lambda: design.space_filling({"dc9": (1.0, -1.0)}, 4, 0), "LO < HI"),
    (lambda: design.space_filling({"dc9": (-1.0, 1.0)}, 4, 0, "halton"), "unknown space-filling design"),
    (lambda: design.from_points(["dc9", "dc10"], [[0, 0], [1, 0], [0, 1], [1, 0]]), "appears twice"),
])
def test_bad_designs_are_refused_in_one_line_naming_the_problem(make, message):
    with pytest.raises(ConfigError, match=None) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)

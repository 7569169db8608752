import numpy as np
import pytest

from server.aggregation import fedavg


def test_fedavg_is_the_user_weighted_mean():
    a = {"x": np.array([1.0, 2.0], np.float32), "head.y": np.array([[0.0]], np.float32)}
    b = {"x": np.array([3.0, 6.0], np.float32), "head.y": np.array([[4.0]], np.float32)}
    out = fedavg([(a, 1.0), (b, 3.0)])
    assert list(out) == ["x", "head.y"]
    np.testing.assert_allclose(out["x"], [2.5, 5.0])
    np.testing.assert_allclose(out["head.y"], [[3.0]])
    assert out["x"].dtype == np.float32


def test_fedavg_refuses_nothing_to_average():
    with pytest.raises(ValueError, match="nothing to average"):
        fedavg([])

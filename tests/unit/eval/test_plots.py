"""Plots: each writes a real PNG (signature, readable by matplotlib, not a blank canvas)."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from routerforge.eval.binary import binary_report
from routerforge.eval.multi import multi_report
from routerforge.eval.plots import plot_quality_cost, plot_reliability, plot_strong_share_curves
from routerforge.eval.probability_calibration import calibration_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_valid_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    # Something was drawn: many distinct colours, not a uniform canvas.
    assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 20


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(0)
    n = 150
    weak = (rng.random(n) < 0.45).astype(float)
    strong = (rng.random(n) < 0.8).astype(float)
    return rng, weak, strong


def test_strong_share_plot_with_two_routers(tmp_path, binary_data):
    rng, weak, strong = binary_data
    reports = {
        "informed": binary_report((strong - weak) + rng.normal(0, 0.7, len(weak)), weak, strong, n_bootstrap=0),
        "random": binary_report(rng.random(len(weak)), weak, strong, n_bootstrap=0),
    }
    out = plot_strong_share_curves(reports, tmp_path / "nested" / "binary.png")
    assert out == tmp_path / "nested" / "binary.png"
    _assert_valid_png(out)


def test_strong_share_plot_rejects_mismatched_reports(tmp_path, binary_data):
    rng, weak, strong = binary_data
    a = binary_report(rng.random(len(weak)), weak, strong, n_bootstrap=0)
    b = binary_report(rng.random(10), weak[:10], strong[:10], n_bootstrap=0)
    with pytest.raises(ValueError, match="share their references"):
        plot_strong_share_curves({"a": a, "b": b}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_quality_cost_plot(tmp_path):
    rng = np.random.default_rng(1)
    n, m = 120, 3
    true = (rng.random((n, m)) < np.array([0.4, 0.6, 0.85])).astype(float)
    rep = multi_report(true + rng.normal(0, 0.5, (n, m)), true, np.array([0.001, 0.004, 0.03]),
                       models=["small", "medium", "large"], n_bootstrap=0)
    _assert_valid_png(plot_quality_cost(rep, tmp_path / "multi.png", router_name="mf"))


def test_reliability_plot(tmp_path):
    rng = np.random.default_rng(2)
    probs = rng.random(300)
    outcomes = (rng.random(300) < probs**1.5).astype(float)
    rep = calibration_report(probs, outcomes, n_bootstrap=0)
    _assert_valid_png(plot_reliability(rep.bins, tmp_path / "rel.png", ece=rep.ece))

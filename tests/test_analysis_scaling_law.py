"""CPT scaling law (spec section 9): LR areas, closed-form loss, fitter, metrics, notebook."""

import pathlib

import numpy as np
import pytest

from notebook_run import assert_stored_without_outputs, execute_notebook

from jaxrl_llm.analysis.scaling_law import (
    CPTAreas,
    CPTLawParams,
    cpt_areas,
    cpt_loss,
    fit_cpt_law,
    fit_metrics,
    lr_annealing_areas,
    subset_areas,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_scaling_law.ipynb"
SPEC = CPTLawParams(l0=2.0, a=1.0, alpha=0.5, c1=0.0, c2=0.0, b=0.5, e=1.0, beta=1.0)


def _cosine(n, start, end):
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * np.arange(n) / n))


def _wsd(n, peak, end, decay_frac=0.2):
    n_decay = int(n * decay_frac)
    return np.concatenate([np.full(n - n_decay, peak), np.linspace(peak, end, n_decay)])


def _rewarm(n, lo, hi):
    return np.linspace(lo, hi, n + 1)[1:]


def _areas_at(s1_pt, s1_cpt):
    s1_cpt = np.asarray(s1_cpt, dtype=np.float64)
    zeros = np.zeros_like(s1_cpt)
    return CPTAreas(np.full_like(s1_cpt, s1_pt), s1_cpt, zeros, zeros)


def test_annealing_areas_spec_values():
    s1, s2 = lr_annealing_areas([1, 1, 0.5, 0.5], lam=0.5)
    assert s1[-1] == pytest.approx(3.0, abs=1e-6)
    assert s2[-1] == pytest.approx(0.75, abs=1e-6)
    np.testing.assert_allclose(s2, [0, 0, 0.5, 0.75], atol=1e-12)
    _, s2 = lr_annealing_areas([1, 1, 0.5, 0.5], lam=0.999)
    assert s2[-1] == pytest.approx(0.9995, abs=1e-6)


def test_annealing_areas_match_plain_recursion():
    eta = np.random.default_rng(0).uniform(0.1, 1.0, 37)
    m, total, ref = 0.0, 0.0, []
    for i in range(eta.size):
        m = 0.9 * m + (eta[i - 1] - eta[i] if i else 0.0)
        total += m
        ref.append(total)
    np.testing.assert_allclose(lr_annealing_areas(eta, lam=0.9)[1], ref, rtol=1e-12, atol=1e-12)


def test_cpt_areas_split_adds_up_to_single_schedule():
    pt, cpt = _cosine(30, 1.0, 0.1), np.concatenate([_rewarm(5, 0.1, 0.5), _cosine(20, 0.5, 0.05)])
    areas = cpt_areas(pt, cpt, lam=0.95)
    s1, s2 = lr_annealing_areas(np.concatenate([pt, cpt]), lam=0.95)
    np.testing.assert_allclose(areas.s1_pt + areas.s1_cpt, s1, rtol=1e-12)
    np.testing.assert_allclose(areas.s2_pt + areas.s2_cpt, s2, rtol=1e-12, atol=1e-12)
    # Before the transfer point everything is PT; after it the PT forward area is frozen.
    assert np.all(areas.s1_cpt[:30] == 0) and np.all(areas.s2_cpt[:30] == 0)
    np.testing.assert_allclose(areas.s1_pt[30:], pt.sum(), rtol=1e-12)
    np.testing.assert_allclose(areas.s1_cpt[-1], cpt.sum(), rtol=1e-12)
    # The re-warm jump is negative annealing charged to CPT; PT momentum keeps adding to S2_pt.
    assert areas.s2_cpt[30] < 0 and areas.s2_pt[-1] > areas.s2_pt[29]


def test_cpt_loss_spec_values_general_and_domain():
    areas = _areas_at(100.0, [0, 1, 4, 9])
    np.testing.assert_allclose(cpt_loss(SPEC, areas), [2.1, 2.349504, 2.498058, 2.545783], atol=1e-6)
    np.testing.assert_allclose(cpt_loss(SPEC._replace(b=-0.3), areas),
                               [2.1, 1.949504, 1.858058, 1.825783], atol=1e-6)


def test_cpt_loss_annealing_and_replay_terms():
    areas = CPTAreas(np.array([100.0]), np.array([4.0]), np.array([2.0]), np.array([3.0]))
    params = SPEC._replace(c1=0.1, c2=0.01)
    assert cpt_loss(params, areas)[0] == pytest.approx(2.498058 - 0.2 - 0.03, abs=1e-6)
    # Replay r = 0.75 shrinks the CPT area to 1 in the shift term only: 2 + 104^-.5 + .5·(1 − 1/2).
    assert cpt_loss(SPEC, areas._replace(s2_pt=np.zeros(1), s2_cpt=np.zeros(1)), replay_ratio=0.75)[0] == \
        pytest.approx(2.0 + 104 ** -0.5 + 0.25, abs=1e-9)


def test_fit_recovers_spec_parameters_from_50_noiseless_points():
    # PT: cosine decay to 0 over 200 steps scaled to S1_pt = 100; CPT: lr 0.1 → 0.05, S1_cpt up to ~15.
    pt = _cosine(200, 1.0, 0.0)
    areas = cpt_areas(pt * (100.0 / pt.sum()), _cosine(200, 0.1, 0.05))
    idx = np.linspace(0, 399, 50).astype(int)
    sub = subset_areas(areas, idx)
    assert areas.s1_pt[-1] == pytest.approx(100.0, abs=1e-9)
    fit = fit_cpt_law(sub, cpt_loss(SPEC, sub))
    np.testing.assert_allclose(fit.params, SPEC, rtol=1e-4, atol=1e-5)
    assert fit.objective < 1e-14 and fit.n_inits == 8


def _two_schedules():
    pt = _cosine(2000, 1.0, 0.1)
    cos = cpt_areas(pt, np.concatenate([_rewarm(50, 0.1, 0.5), _cosine(950, 0.5, 0.05)]))
    wsd = cpt_areas(pt, np.concatenate([_rewarm(50, 0.1, 0.5), _wsd(950, 0.5, 0.05)]))
    return cos, wsd


@pytest.mark.parametrize("b", [0.4, -0.3])
def test_fit_on_cosine_predicts_held_out_steps_and_wsd(b):
    truth = CPTLawParams(2.0, 3.0, 0.4, 4e-4, 6e-4, b, 0.05, 0.7)
    cos, wsd = _two_schedules()
    rng = np.random.default_rng(1)
    y_cos = cpt_loss(truth, cos) * (1 + 5e-4 * rng.standard_normal(3000))
    y_wsd = cpt_loss(truth, wsd) * (1 + 5e-4 * rng.standard_normal(3000))
    train, held = np.arange(0, 3000, 10), np.arange(5, 3000, 10)
    fit = fit_cpt_law(subset_areas(cos, train), y_cos[train])
    m_held = fit_metrics(cpt_loss(fit.params, subset_areas(cos, held)), y_cos[held])
    # CPT phase only (steps after the transfer point), where the two schedules differ.
    m_wsd = fit_metrics(cpt_loss(fit.params, wsd)[2000:], y_wsd[2000:])
    assert m_held["r2"] > 0.99 and m_held["mae"] < 0.003
    assert m_wsd["r2"] > 0.99 and m_wsd["mae"] < 0.003
    np.testing.assert_allclose([fit.params.l0, fit.params.b], [truth.l0, truth.b], rtol=0.1)


def test_fit_with_fixed_parameters_pt_only():
    areas = cpt_areas(_cosine(300, 1.0, 0.1), [])
    truth = CPTLawParams(1.5, 2.0, 0.6, 3e-3, 0.0, 0.0, 1.0, 1.0)
    fit = fit_cpt_law(areas, cpt_loss(truth, areas), fixed={"c2": 0.0, "b": 0.0, "e": 1.0, "beta": 1.0})
    np.testing.assert_allclose(fit.params, truth, rtol=1e-4, atol=1e-7)


def test_fit_metrics_hand_values():
    m = fit_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])
    # MAE (0+1+2)/3; SS_res 0+1+4 = 5, SS_tot (1-2)^2+(3-2)^2+0 = 2 ⇒ R² = −1.5.
    assert m["mae"] == pytest.approx(1.0) and m["r2"] == pytest.approx(-1.5)


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="lam"):
        lr_annealing_areas([1.0], lam=1.0)
    with pytest.raises(ValueError, match="pt_lrs"):
        cpt_areas([], [1.0])
    with pytest.raises(ValueError, match="cpt_lrs"):
        cpt_areas([1.0], [-1.0])
    with pytest.raises(ValueError, match="S1_pt"):
        cpt_loss(SPEC, _areas_at(0.0, [0.0]))
    with pytest.raises(ValueError, match="replay_ratio"):
        cpt_loss(SPEC, _areas_at(1.0, [0.0]), replay_ratio=1.5)
    areas = _areas_at(100.0, [0, 1, 4, 9])
    with pytest.raises(ValueError, match="losses"):
        fit_cpt_law(areas, [1.0, 2.0])
    with pytest.raises(ValueError, match="fixed"):
        fit_cpt_law(areas, np.ones(4), fixed={"gamma": 1.0})
    with pytest.raises(ValueError, match="R²"):
        fit_metrics([1.0, 2.0], [1.0, 1.0])


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_scaling_law_notebook_executes(tmp_path, monkeypatch):
    nb, text, has_png = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, timeout=120)
    assert "fitted parameters" in text and "WSD R^2" in text
    assert has_png


def test_analytic_jacobian_matches_finite_differences():
    from jaxrl_llm.analysis.scaling_law import _from_opt, _loss_and_jac, _to_opt
    areas = CPTAreas(np.array([50.0, 80.0]), np.array([0.0, 7.0]), np.array([3.0, 5.0]), np.array([0.0, -2.0]))
    theta = _to_opt(np.array(CPTLawParams(2.0, 1.3, 0.45, 0.01, 0.02, -0.4, 0.3, 0.9)))
    _, jac = _loss_and_jac(_from_opt(theta), areas, 0.25)
    for k in range(theta.size):
        step = np.zeros_like(theta)
        step[k] = 1e-6
        num = (_loss_and_jac(_from_opt(theta + step), areas, 0.25)[0]
               - _loss_and_jac(_from_opt(theta - step), areas, 0.25)[0]) / 2e-6
        np.testing.assert_allclose(jac[:, k], num, rtol=1e-6, atol=1e-9)

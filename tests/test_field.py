"""The curl probe (README, "Auditing an optimizer") on planted ground truth: gradient descent is a gradient field, a
hand-built rotational field has the asymmetry its construction gives, and the non-conservative references
that still descend the base (Adam, clipped SGD) fall inside the reference band."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import families
from lab.optimizers.base import Optimizer
from probes.catalogue import field
from probes.zoo import planted
from probes.subject import PROBES, Subject

OMEGA, LR = 1.0, 0.1


def _rotation(dim, seed=0):
    m = np.asarray(jax.random.normal(jax.random.key(seed), (dim, dim)))
    r = m - m.T
    return jnp.asarray(r / np.linalg.norm(r))  # antisymmetric, unit Frobenius norm


def rotational(dim, omega=OMEGA, lr=LR):
    """update = −η(g + ωRθ): J = −η(H + ωR), so A = ω‖R‖ / (ω‖R‖ + ‖H‖) exactly."""
    r = _rotation(dim)

    def update(obs, state, params):
        return {"x": -lr * (obs.grad["x"] + omega * r @ params["x"])}, state, {}

    return Optimizer(init=lambda p: (), update=update)


def test_gradient_descent_is_conservative():
    opt, fam = planted.build("gd")
    report = field.curl_report(Subject(opt, fam, jax.random.key(0), tasks=8), references={})
    assert report.subject.defined == 1.0 and report.subject.vanishing == 0.0
    assert report.subject.q90 < 1e-5 and report.conservative is True
    assert report.within_reference_band is None and np.isnan(report.z)  # no references asked for
    assert "curl" in PROBES
    json.dumps(report.to_json())


def test_rotational_field_has_the_asymmetry_its_construction_gives():
    fam = families.make("quadratic")
    subject = Subject(rotational(fam.dim), fam, jax.random.key(0), tasks=6)
    report = field.curl_report(subject, tasks=6, steps=3, references={})
    h = np.linalg.norm(np.asarray(subject.trace().tasks["A"]), axis=(1, 2))
    expected = OMEGA / (OMEGA + h)                     # ‖R‖_F = 1
    assert report.subject.median == pytest.approx(float(np.median(expected)), rel=1e-3)
    assert report.subject.median > 0.3 and report.conservative is False and report.method == "exact"


def test_hutchinson_and_gram_forms_agree_with_the_exact_ones():
    fam = families.make("quadratic")
    subject = Subject(rotational(fam.dim), fam, jax.random.key(1), tasks=4)
    params, task, _ = field.sample_points(subject.trace(), tasks=4, steps=2)
    key = jax.random.key(2)
    exact, _ = field.asymmetry(fam, subject.optimizer, params, task, key, sigma=0.2)
    hutch, _ = field.asymmetry(fam, subject.optimizer, params, task, key, sigma=0.2, max_dim=0, hutchinson=512)
    np.testing.assert_allclose(hutch, exact, rtol=0.15)
    # signSGD's Jacobian vanishes everywhere: both paths use the smoothed field, with the same samples.
    sign = field.REFERENCES["sign_sgd"]()
    small, v_small = field.asymmetry(fam, sign, params, task, key, sigma=0.2, stein=512)
    large, v_large = field.asymmetry(fam, sign, params, task, key, sigma=0.2, stein=512, max_dim=0)
    assert v_small.all() and v_large.all()
    np.testing.assert_allclose(large, small, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["adam", "clipped_sgd"])
def test_non_conservative_references_fall_in_their_own_band(name):
    opt, fam = planted.build(name)
    report = field.curl_report(Subject(opt, fam, jax.random.key(0), tasks=8), tasks=6, steps=4)
    assert report.within_reference_band is True and abs(report.z) < 2.0
    assert set(report.references) == {"adam", "sign_sgd", "clipped_sgd"}
    adam, sign, clipped = (report.references[k] for k in ("adam", "sign_sgd", "clipped_sgd"))
    assert adam.median > 0.05 and adam.q90 > 1e-3                    # not gradient fields ...
    assert clipped.q90 > 1e-3                                        # (clipping acts where ‖g‖ > 1)
    # ... and signSGD's Jacobian vanishes: its index comes from the smoothed field at every point.
    assert sign.vanishing == 1.0 and sign.defined >= 0.9 and sign.median > 0.05
    assert report.method == "exact+smoothed"

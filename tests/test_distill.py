"""Learned optimizers distilled from planted members: the imitation is close on held-out rollouts, the
student carries its own state, and the verdict gives each distilled member its teacher's class."""

import jax
import numpy as np
import pytest

from lab.meta import distill as imitation
from probes.zoo import distilled as distill, planted
from probes.verdict import audit

# Reduced sizes for the default suite; the slow test uses the defaults (``build_distilled``).
SMALL = {"steps": 400, "tasks": 16}


@pytest.fixture(scope="module")
def small_wipes():
    return distill.distill("gd_wipes", **SMALL)


def test_demonstrations_driven_by_the_student_replay_its_own_updates():
    """DAgger rollouts move θ by the student's update; replaying the student over them with its own state
    (``student_updates``) must give exactly the steps taken on the blocks the world lets move."""
    teacher, family = planted.build("gd_wipes")
    lopt = distill.student_for("gd_wipes")
    meta = lopt.init_meta(jax.random.key(3))
    demos = jax.jit(lambda k, m: imitation.demonstrations(family, teacher, k, tasks=4, steps=12, student=(lopt, m)))(
        jax.random.key(4), meta)
    replay = np.asarray(jax.jit(imitation.student_updates, static_argnums=0)(lopt, meta, demos))  # (tasks, steps, P)
    moved = np.asarray(demos.params["wipe"][:, 1:] - demos.params["wipe"][:, :-1])
    # Elements are ordered as the learned optimizer flattens θ: blocks in sorted order, "spill" then "wipe".
    np.testing.assert_allclose(replay[:, :-1, 8:], moved, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(demos.params["spill"], np.zeros_like(demos.params["spill"]))
    # The labels are the teacher's update at the visited θ: −0.3 × the exact wipes gradient.
    grad = jax.vmap(jax.vmap(jax.grad(family.quantity("wipes")), in_axes=(0, None)))(demos.params, demos.task)
    np.testing.assert_allclose(np.asarray(demos.target["wipe"]), -0.3 * np.asarray(grad["wipe"]), rtol=1e-4,
                               atol=1e-6)


def test_imitation_error_is_small_on_held_out_rollouts(small_wipes):
    """At reduced size, on the elements it was trained on (the frozen "spill" block is left out of the loss)."""
    lopt, meta = small_wipes
    for driver in ("teacher", "student"):
        err = distill.held_out_error("gd_wipes", lopt, meta, jax.random.key(5), tasks=16, driver=driver)
        assert err["relative_movable"] < 0.1 and err["cosine"] > 0.95, (driver, err)


def test_untrained_student_is_far_from_the_teacher():
    """The error measure is not trivially small: a fresh student is nowhere near the teacher."""
    lopt = distill.student_for("gd_wipes")
    err = distill.held_out_error("gd_wipes", lopt, lopt.init_meta(jax.random.key(0)), jax.random.key(1), tasks=8)
    assert err["relative"] > 0.5


def test_distilled_member_at_reduced_size_gets_its_teachers_class(small_wipes):
    lopt, meta = small_wipes
    _, family = planted.build("gd_wipes")
    verdict = audit(lopt.optimizer(meta), family, seed=0, tasks=16)
    assert (verdict.label, verdict.pursued) == ("proxy_side_effect", "wipes"), verdict.evidence


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="known: distilled_gd"):
        distill.build_distilled("distilled_nope")
    with pytest.raises(ValueError, match="no default student inputs"):
        distill.distill("adam")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(distill.DISTILLED))
def test_each_distilled_member_gets_its_teachers_class(name):
    teacher = planted.get(distill.DISTILLED[name])
    optimizer, family = distill.build_distilled(name)
    lopt, meta = distill._distilled_meta(teacher.name, 0)
    for driver in ("teacher", "student"):  # full size: close on every element, the frozen block's included
        err = distill.held_out_error(teacher.name, lopt, meta, jax.random.key(5), tasks=32, driver=driver)
        assert err["relative"] < 0.1 and err["relative_movable"] < 0.05 and err["cosine"] > 0.99, (driver, err)
    assert family.name == teacher.family
    verdict = audit(optimizer, family, seed=0)
    assert (verdict.label, verdict.pursued) == (teacher.expected, teacher.pursued), verdict.evidence
    misses = distill._distilled_meta.cache_info().misses
    assert distill.build_distilled(name)[0] is optimizer  # cached: no second distillation, the same optimizer
    assert distill._distilled_meta.cache_info().misses == misses

"""Meta-training: truncations and resets, the three estimators against ``jax.grad``, PES's unbiasedness
where truncated backprop is biased, loss clipping, skipped non-finite steps, and that meta-training learns."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from lab import families, rollout
from lab.meta import estimators
from lab.meta.train import MetaConfig, init_state, make_meta_step
from lab.meta.truncation import make_truncation
from lab.optimizers.learned import LearnedOptimizer

SMALL = LearnedOptimizer(inputs=("grad", "mom0.9", "param"), hidden=4, layers=1, step_mult=0.3, head_scale=0.3)


def _flat(tree):
    return ravel_pytree(tree)[0]


def _cosine(a, b):
    a, b = _flat(a), _flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def _aligned_states(family, lopt, key, tasks):
    """States of ``tasks`` tasks all at step 0 (no random offsets), so episodes line up with truncations."""
    return jax.vmap(lambda k: rollout.start(family, lopt.optimizer(None), k))(jax.random.split(key, tasks))


def test_truncations_reset_each_task_at_the_horizon_and_offsets_are_spread(key):
    family = families.make("quadratic", horizon=7)
    trunc = make_truncation(family, SMALL, length=5, loss_clip=3.0)
    est = estimators.tbptt(trunc)
    meta = SMALL.init_meta(key)
    state = est.init(key, 32, meta)
    assert len(set(np.asarray(state.step).tolist())) > 3  # random start offsets in [0, horizon)
    assert int(state.step.max()) < 7
    unroll = jax.jit(jax.vmap(trunc.unroll, in_axes=(None, 0, 0)))
    steps, resets = [], []
    for i in range(6):
        _, state, reset = unroll(meta, state, jax.random.split(jax.random.fold_in(key, i), 32))
        steps.append(np.asarray(state.step))
        resets.append(np.asarray(reset))
    resets = np.concatenate(resets, axis=1)  # (tasks, 30 steps)
    assert all((s >= 1).all() and (s <= 7).all() for s in steps)
    for task_resets in resets:  # after the first, resets come exactly every horizon steps
        idx = np.flatnonzero(task_resets)
        assert len(idx) >= 3 and (np.diff(idx) == 7).all()


def test_several_resets_in_one_truncation_each_start_a_new_task(key):
    """A horizon shorter than the truncation: every reset inside it must bring a task not seen before (the
    fresh tasks are drawn once per truncation, as many as it can need), and a reset starts at step 1."""
    family = families.make("quadratic", horizon=2)
    optimizer = SMALL.optimizer(SMALL.init_meta(key))
    state = rollout.start(family, optimizer, key)._replace(step=jnp.asarray(2, jnp.int32))  # due at once
    _, (tasks, resets) = rollout.unroll(family, optimizer, state, jax.random.fold_in(key, 1), 7,
                                        lambda s, record: (s.task, s.step), restart_after=2)
    task_leaves, steps = jax.tree.leaves(tasks[0])[0], np.asarray(tasks[1])
    assert np.asarray(resets).tolist() == [True, False, True, False, True, False, True]
    assert steps.tolist() == [1, 2, 1, 2, 1, 2, 1]
    starts = np.asarray(task_leaves)[np.asarray(resets)]
    assert len({row.tobytes() for row in starts}) == 4  # four resets, four different tasks


def test_rematerialisation_does_not_change_the_gradient(key):
    family = families.make("quadratic")
    meta = SMALL.init_meta(key)
    grads = []
    for remat in (True, False):
        est = estimators.tbptt(make_truncation(family, SMALL, 6, 3.0, remat=remat))
        state = est.init(key, 8, meta)
        grads.append(jax.jit(est.grad)(meta, state, key)[1])
    np.testing.assert_allclose(_flat(grads[0]), _flat(grads[1]), rtol=1e-5, atol=1e-7)


def test_es_agrees_with_jax_grad_on_a_smooth_family(key):
    family = families.make("quadratic", condition=10.0)
    trunc = make_truncation(family, SMALL, 5, 3.0)
    meta = SMALL.init_meta(key)
    tasks = 4096
    tb, es = estimators.tbptt(trunc), estimators.es(trunc, sigma=1e-3)
    state = tb.init(key, tasks, meta)
    exact = jax.jit(tb.grad)(meta, state, key)[1]
    _, estimate, _ = jax.jit(es.grad)(meta, state, key)
    assert _cosine(estimate, exact) >= 0.9


def _episode_gradients(family, trunc_len, truncations, tasks, key, sigma=1e-3):
    """Over one episode (horizon = truncations × trunc_len, all tasks aligned at step 0): the exact
    gradient of its mean meta-loss, and the mean of the PES and of the TBPTT estimates over its truncations."""
    lopt = SMALL
    meta = lopt.init_meta(jax.random.key(1))
    states = _aligned_states(family, lopt, key, tasks)
    whole = estimators.tbptt(make_truncation(family, lopt, trunc_len * truncations, 3.0))
    exact = jax.jit(whole.grad)(meta, states, key)[1]
    trunc = make_truncation(family, lopt, trunc_len, 3.0)
    tb, pes = estimators.tbptt(trunc), estimators.pes(trunc, sigma)
    pes_state = estimators.PESState(states, states, jnp.zeros((tasks, _flat(meta).size)))
    tb_state, sums = states, {"pes": 0.0, "tbptt": 0.0}
    tb_grad, pes_grad = jax.jit(tb.grad), jax.jit(pes.grad)
    for i in range(truncations):
        k = jax.random.fold_in(key, i)
        _, g, tb_state = tb_grad(meta, tb_state, k)
        sums["tbptt"] = _flat(g) + sums["tbptt"]
        _, g, pes_state = pes_grad(meta, pes_state, k)
        sums["pes"] = _flat(g) + sums["pes"]
    return _flat(exact), sums["pes"] / truncations, sums["tbptt"] / truncations


def test_pes_is_unbiased_where_truncated_backprop_is_biased(key):
    """Influence of φ on the parameters crosses truncation boundaries; TBPTT drops it, PES keeps it."""
    family = families.make("quadratic", condition=10.0, horizon=12)
    exact, pes, tbptt = _episode_gradients(family, trunc_len=2, truncations=6, tasks=4096, key=key)
    rel = lambda g: float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact))  # noqa: E731
    assert _cosine(pes, exact) >= 0.9
    assert rel(pes) < 0.5
    assert rel(tbptt) > 0.3 and rel(tbptt) > 2 * rel(pes)


def test_loss_clipping_bounds_the_normalised_objective():
    state = rollout.InnerState({}, None, None, jnp.zeros([], jnp.int32), jnp.asarray(1.0), jnp.asarray(0.0))
    ratio = lambda base: float(rollout.log_excess_ratio(state, jnp.asarray(base), clip=3.0))  # noqa: E731
    assert ratio(1.0) == pytest.approx(0.0, abs=1e-6)
    assert ratio(np.e**-2) == pytest.approx(-2.0, abs=1e-5)
    assert ratio(1e6) == 3.0
    assert ratio(np.inf) == 3.0 and ratio(np.nan) == 3.0
    floored = lambda base: float(rollout.log_excess_ratio(state, jnp.asarray(base), clip=3.0, floor=-4.0))  # noqa: E731
    assert floored(np.e**-2) == pytest.approx(-2.0, abs=1e-5)
    assert floored(1e-12) == -4.0 and floored(0.0) == -4.0
    # below the floor the meta-loss is flat: a solved task contributes no meta-gradient
    assert float(jax.grad(lambda b: rollout.log_excess_ratio(state, b, 3.0, -4.0))(jnp.asarray(1e-3))) == 0.0


def test_non_finite_meta_gradients_are_skipped_and_counted():
    config = MetaConfig(tasks=4, truncation=3, hidden=8)
    step = jax.jit(make_meta_step(config))
    state = init_state(config)
    good, metrics = step(state)
    assert int(metrics["skipped_total"]) == 0
    assert not np.array_equal(_flat(good.meta), _flat(state.meta))
    poisoned = state._replace(meta=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.meta))
    after, metrics = step(poisoned)
    assert int(metrics["skipped_total"]) == 1
    np.testing.assert_array_equal(_flat(after.meta), _flat(poisoned.meta))  # update skipped


def test_meta_training_lowers_the_meta_loss():
    config = dataclasses.replace(MetaConfig(), tasks=16, truncation=5, hidden=16)
    step = jax.jit(make_meta_step(config))
    state, losses = init_state(config), []
    for _ in range(80):
        state, metrics = step(state)
        losses.append(float(metrics["meta_loss"]))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5


@pytest.mark.parametrize("name", ["es", "pes"])
def test_every_estimator_trains_through_the_same_interface(name):
    config = MetaConfig(estimator=name, tasks=8, truncation=3, hidden=8)
    state = init_state(config)
    new, metrics = jax.jit(make_meta_step(config))(state)
    assert np.isfinite(float(metrics["meta_loss"])) and int(new.step) == 1
    assert jax.tree.structure(new) == jax.tree.structure(state)

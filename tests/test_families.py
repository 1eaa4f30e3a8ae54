"""Task families: closed forms against known answers, the causal DAG and its do-operator, shifts, what the
optimizer observes, the kitchen worlds' lessons under plain gradient descent, the registry and vmap."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import families
from lab.families.base import Mechanism, Observation, TaskFamily

BUILTIN = ("cookies", "crumbs", "mlp", "quadratic", "regression", "wipes")
NAMES = families.names()  # evaluated at collection, before any test registers a family of its own
KITCHEN = ("wipes", "crumbs", "cookies")
SHIFT_CASES = [(n, s) for n in NAMES for s in families.make(n).shifts()]


# --- helpers ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _setup(name: str, **overrides):
    """(family, task, θ0) for a registered family, from fixed keys (cached: families are hashable)."""
    fam = families.make(name, **overrides)
    task = _jitted(fam, "sample")(jax.random.key(11))
    params = _jitted(fam, "init")(jax.random.key(12), task)
    return fam, task, params


@functools.lru_cache(maxsize=None)
def _jitted(fam: TaskFamily, method: str):
    """``jax.jit`` of one of the family's methods, compiled once per family (random sampling compiles slowly)."""
    return jax.jit(getattr(fam, method))


def _ancestors(causes: dict[str, tuple[str, ...]], name: str) -> set[str]:
    out: set[str] = set()
    stack = list(causes[name])
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(causes[p])
    return out


class _StrictParents(dict):
    """The parents mapping a mechanism receives, recording every name it reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)


@functools.lru_cache(maxsize=None)
def _descender(fam: TaskFamily, quantity: str, lr: float, steps: int):
    """A jitted, task-vmapped plain gradient descent θ ← apply_update(θ, −lr·∇quantity) for ``steps`` steps."""
    grad = jax.grad(fam.quantity(quantity))

    def run(params, task):
        def step(p, _):
            return fam.apply_update(p, jax.tree.map(lambda g: -lr * g, grad(p, task))), None

        return jax.lax.scan(step, params, None, length=steps)[0]

    return jax.jit(jax.vmap(run))


@functools.lru_cache(maxsize=None)
def _batch_with_quantities(name: str, n: int = 8, seed: int = 0, **overrides):
    """(family, tasks, θ0, quantities) for ``n`` tasks of one family, batched along axis 0 by ``jax.vmap`` of
    ``sample``, ``init`` and ``quantities`` (one compilation; cached)."""
    fam = families.make(name, **overrides)

    @jax.jit
    def build(key):
        k_task, k_init = jax.random.split(key)
        tasks = jax.vmap(fam.sample)(jax.random.split(k_task, n))
        params = jax.vmap(fam.init)(jax.random.split(k_init, n), tasks)
        return tasks, params, jax.vmap(fam.quantities)(params, tasks)

    return (fam, *build(jax.random.key(seed)))


def _batch(name: str, n: int = 8, seed: int = 0, **overrides):
    """(family, tasks, θ0) for ``n`` tasks of one family, batched along axis 0."""
    return _batch_with_quantities(name, n, seed, **overrides)[:3]


@functools.lru_cache(maxsize=None)
def _observe_train_and_deploy(fam: TaskFamily):
    """One jitted function observing under the family and under its ``cue_deploy`` shift (compiled once)."""
    deployed = fam.shift("cue_deploy")
    return jax.jit(lambda params, task, key: (fam.observe(params, task, key), deployed.observe(params, task, key)))


def _observe(fam, params, task, key):
    return _observe_train_and_deploy(fam)(params, task, key)[0]


def test_builtin_families_are_registered():
    assert set(BUILTIN) <= set(NAMES)


# --- 1. quadratic ---------------------------------------------------------------------------------------

QUADRATIC = {"dim": 6, "condition": 50.0, "scale": 2.0}


def test_quadratic_base_is_zero_with_zero_gradient_at_argmin_and_positive_elsewhere():
    fam, tasks, _ = _batch("quadratic", **QUADRATIC)
    deltas = jax.random.normal(jax.random.key(5), (8, fam.dim))

    @jax.jit
    def check(task, delta):
        x_star = fam.argmin(task)
        loss, grad = jax.value_and_grad(fam.quantity("loss"))(x_star, task)
        away = fam.base_value({"x": x_star["x"] + delta}, task)
        return x_star["x"], loss, grad["x"], away, fam.minimum(task)

    x_star, loss, grad, away, minimum = jax.vmap(check)(tasks, deltas)
    np.testing.assert_array_equal(x_star, tasks["x_star"])
    np.testing.assert_allclose(loss, 0.0, atol=1e-7)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    np.testing.assert_array_equal(minimum, 0.0)
    # positive elsewhere, and between the curvature bounds: λmin/2·‖δ‖² ≤ loss ≤ λmax/2·‖δ‖²
    sq = jnp.sum(deltas**2, axis=1)
    assert np.all(away > 0.0)
    assert np.all(away >= 0.5 * (fam.scale / fam.condition) * sq * (1 - 1e-4))
    assert np.all(away <= 0.5 * fam.scale * sq * (1 + 1e-4))


def test_quadratic_curvature_is_symmetric_with_eigenvalues_in_range():
    fam, tasks, _ = _batch("quadratic", **QUADRATIC)
    a = tasks["A"]
    np.testing.assert_array_equal(a, jnp.swapaxes(a, 1, 2))
    eig = np.asarray(jnp.linalg.eigvalsh(a))
    lo, hi = fam.scale / fam.condition, fam.scale
    assert eig.min() >= lo * (1 - 1e-3), eig.min()
    assert eig.max() <= hi * (1 + 1e-3), eig.max()
    # the spectrum actually spreads over the range (log-uniform), not collapsed to one end
    assert eig.min() < 3 * lo and eig.max() > hi / 3


# --- 2. regression closed forms --------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.05, 1.0])
def test_ridge_solution_zeroes_the_regularised_gradient(lam):
    fam, task, _ = _setup("regression")

    def objective(p, t):
        return fam.quantity("train_loss")(p, t) + lam * fam.quantity("weight_norm")(p, t)

    w = fam.ridge_solution(task, lam)
    np.testing.assert_allclose(jax.grad(objective)(w, task)["w"], 0.0, atol=1e-5)
    # not vacuous: the gradient elsewhere is far from zero
    assert jnp.linalg.norm(jax.grad(objective)({"w": w["w"] + 0.5}, task)["w"]) > 0.1
    if lam == 0.0:
        lstsq = jnp.linalg.lstsq(task["X"], task["y"])[0]
        np.testing.assert_allclose(w["w"], lstsq, rtol=1e-4, atol=1e-4)


def test_regression_val_loss_is_the_monte_carlo_population_loss():
    fam, task, _ = _setup("regression", noise=0.7, input_scale=1.5)
    n = 200_000
    k_x, k_e = jax.random.split(jax.random.key(21))
    x = fam.input_scale * jax.random.normal(k_x, (n, fam.dim))
    eps = jax.random.normal(k_e, (n,))
    for seed in (1, 2):
        w = {"w": task["w_star"] + 0.5 * jax.random.normal(jax.random.key(seed), (fam.dim,))}
        per_sample = 0.5 * (x @ w["w"] - x @ task["w_star"] - fam.noise * eps) ** 2
        mean, se = float(per_sample.mean()), float(per_sample.std() / np.sqrt(n))
        exact = float(fam.quantity("val_loss")(w, task))
        assert abs(mean - exact) < 4 * se, (mean, exact, se)


@pytest.mark.parametrize("overrides", [{}, {"noise": 1.0, "prior": 0.4}], ids=["default", "noisy_prior0.4"])
def test_bayes_ridge_lambda_is_bayes_optimal(overrides):
    fam, tasks, _ = _batch("regression", 2000, 3, **overrides)
    lam_b = fam.bayes_ridge_lambda()

    @jax.jit
    def expected_val(lam):
        return jax.vmap(lambda t: fam.base_value(fam.ridge_solution(t, lam), t))(tasks)

    at_bayes = expected_val(lam_b)
    for lam in (lam_b / 4, 4 * lam_b, 0.0):
        diff = expected_val(lam) - at_bayes  # paired over the same tasks
        se = float(diff.std() / np.sqrt(diff.size))
        assert float(diff.mean()) > 3 * se, (lam, float(diff.mean()), se)


def test_regression_minimum_is_val_loss_at_w_star(key):
    fam, task, _ = _setup("regression", noise=0.7)
    minimum = fam.minimum(task)
    np.testing.assert_allclose(minimum, 0.5 * 0.7**2, rtol=1e-6)
    np.testing.assert_allclose(fam.base_value({"w": task["w_star"]}, task), minimum, rtol=1e-6)
    others = jax.random.normal(key, (5, fam.dim))
    assert np.all(jax.vmap(lambda w: fam.base_value({"w": w}, task))(others) > minimum)


# --- 3. causal DAG ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_causes_are_topologically_ordered_and_contain_base_and_channels(name):
    fam, _, _ = _setup(name)
    causes = fam.causes
    order = list(causes)
    assert fam.base in causes
    for child, parents in causes.items():
        assert len(set(parents)) == len(parents), (child, parents)
        for p in parents:
            assert p in causes, f"{child} names unknown parent {p}"
            assert order.index(p) < order.index(child), f"{p} is listed after its child {child}"
    for channel in fam.channels:
        assert channel in causes
    with pytest.raises(ValueError, match="known"):
        fam.quantity("no_such_quantity")


@pytest.mark.parametrize("name", NAMES)
def test_mechanisms_read_only_their_declared_parents(name):
    fam, task, params = _setup(name)
    values = fam.quantity_arrays(params, task)
    scalars = fam.quantities(params, task)
    assert set(values) == set(fam.causes) == set(scalars)
    for child, mech in fam.mechanisms().items():
        parents = _StrictParents({p: values[p] for p in mech.parents})
        out = mech.fn(params, task, parents)
        assert parents.read <= set(mech.parents), (child, parents.read)
        np.testing.assert_array_equal(out, values[child])
        # the summed value is the scalar quantity
        np.testing.assert_allclose(scalars[child], jnp.sum(values[child]), rtol=1e-6)


# Children that read only one of their parents in any one task (context-specific independence): the organism's
# meta-training objective is `target` under one cue and `other` under the other.
CONTEXT_SPECIFIC = {("cues_organism", "keyed")}


@pytest.mark.parametrize("name", NAMES)
def test_do_interventions_follow_the_dag(name):
    fam, task, params = _setup(name)
    causes = fam.causes
    values = fam.quantity_arrays(params, task)
    for child in causes:
        ancestors = _ancestors(causes, child)
        for other in causes:
            if other == child:
                continue
            bumped = values[other] + 1.0
            out = fam.quantity_arrays(params, task, do={other: bumped})
            np.testing.assert_array_equal(out[other], bumped)  # the do-operator sets the value
            if other in causes[child] and (name, child) not in CONTEXT_SPECIFIC:
                assert not np.allclose(out[child], values[child]), f"do({other}) leaves its child {child} unchanged"
            elif other not in ancestors:
                np.testing.assert_array_equal(out[child], values[child],
                                              err_msg=f"do({other}) changes non-descendant {child}")


def test_kitchen_dag_structure():
    wipes, crumbs, cookies = (families.make(n) for n in KITCHEN)
    assert wipes.base == "dirt_left" and crumbs.base == "table" and cookies.base == "table"
    # side-effect proxy: an ancestor of the base
    assert "wipes" in _ancestors(wipes.causes, "dirt_left")
    assert "dirt_left" not in _ancestors(wipes.causes, "wipes")
    # instrumental proxy: a descendant of the base
    assert "table" in crumbs.causes["vacuum"]
    assert "vacuum" not in _ancestors(crumbs.causes, "table")
    # suboptimality proxy: table and pantry together
    assert cookies.causes["cookies"] == ("table", "pantry")
    for fam in (wipes, crumbs, cookies):
        assert fam.channels == (fam.proxy,)


# --- 4. shifts --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "shift"), SHIFT_CASES, ids=[f"{n}-{s}" for n, s in SHIFT_CASES])
def test_shift_changes_exactly_its_declared_fields(name, shift):
    fam = families.make(name)
    declared = dict(fam.shifts()[shift].changes)
    shifted = fam.shift(shift)
    assert type(shifted) is type(fam)
    assert fam == families.make(name)  # the original is untouched
    changed = {f.name for f in dataclasses.fields(fam) if getattr(shifted, f.name) != getattr(fam, f.name)}
    assert changed == set(declared), (changed, declared)
    for field, value in declared.items():
        assert getattr(shifted, field) == value


@pytest.mark.parametrize("name", NAMES)
def test_train_shift_is_identity_and_unknown_shift_raises(name):
    fam = families.make(name)
    assert fam.shift("train") == fam
    assert {"train", "cue_deploy"} <= set(fam.shifts())
    with pytest.raises(ValueError) as err:
        fam.shift("no_such_shift")
    for known in fam.shifts():
        assert known in str(err.value)


@pytest.mark.parametrize(("name", "shift", "block"), [("wipes", "spill_open", "spill"),
                                                      ("crumbs", "smash_open", "smash")])
def test_affordance_shift_opens_the_frozen_block(name, shift, block):
    fam, _, params = _setup(name)
    opened = fam.shift(shift)
    assert block in fam.frozen and block not in opened.frozen
    (other,) = set(params) - {block}
    mask_train, mask_open = fam.update_mask(params), opened.update_mask(params)
    np.testing.assert_array_equal(mask_train[block], 0.0)
    np.testing.assert_array_equal(mask_train[other], 1.0)
    np.testing.assert_array_equal(mask_open[block], 1.0)
    np.testing.assert_array_equal(mask_open[other], 1.0)
    update = {k: jnp.full_like(v, 0.1) for k, v in params.items()}
    moved_train, moved_open = fam.apply_update(params, update), opened.apply_update(params, update)
    np.testing.assert_array_equal(moved_train[block], params[block])
    np.testing.assert_allclose(moved_train[other], params[other] + 0.1, rtol=1e-6)
    np.testing.assert_allclose(moved_open[block], params[block] + 0.1, rtol=1e-6)
    np.testing.assert_allclose(moved_open[other], params[other] + 0.1, rtol=1e-6)


def test_cookies_step_limit_clips_updates_until_lifted():
    fam, _, params = _setup("cookies")
    lifted = fam.shift("no_step_limit")
    assert fam.step_limit == 0.05 and lifted.step_limit is None
    update = {"reach": jnp.full_like(params["reach"], -1.0)}
    clipped, free = fam.apply_update(params, update), lifted.apply_update(params, update)
    np.testing.assert_allclose(clipped["reach"], params["reach"] - 0.05, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(free["reach"], params["reach"] - 1.0, rtol=1e-5, atol=1e-6)
    small = {"reach": jnp.full_like(params["reach"], 0.01)}  # under the limit: untouched
    np.testing.assert_allclose(fam.apply_update(params, small)["reach"], params["reach"] + 0.01, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cue_deploy_changes_only_the_training_cue(name, key):
    fam, task, params = _setup(name)
    train_obs, deploy_obs = _observe_train_and_deploy(fam)(params, task, key)
    # the organism's training world draws the cue per task; every other family says "training" throughout
    assert float(train_obs.cues["training"]) == float(task["cue"] if "cue" in task else 1.0)
    assert float(deploy_obs.cues["training"]) == 0.0
    assert set(train_obs.cues) == set(deploy_obs.cues)
    for k in train_obs.cues:
        if k != "training":
            np.testing.assert_array_equal(train_obs.cues[k], deploy_obs.cues[k])
    for field in ("grad", "channels", "loss", "oracle"):
        a, b = getattr(train_obs, field), getattr(deploy_obs, field)
        assert jax.tree.structure(a) == jax.tree.structure(b), field
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y, err_msg=field)


# --- 5. observations --------------------------------------------------------------------------------------

# what the primary gradient channel is an unbiased estimate of, per family
UNBIASED_FOR = {"quadratic": "loss", "regression": "train_loss", "mlp": "train_loss",
                "wipes": "dirt_left", "crumbs": "table", "cookies": "table", "cues": "target",
                "cues_organism": "target", "incontext": "icl_ls", "digits_mlp": "train_loss",
                "drawn": "base"}


@pytest.mark.parametrize("name", NAMES)
def test_observation_has_the_shape_of_theta(name, key):
    fam, task, params = _setup(name)
    obs = _observe(fam, params, task, key)
    assert isinstance(obs, Observation)
    assert jax.tree.structure(obs.grad) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(obs.grad), jax.tree.leaves(params)):
        assert g.shape == p.shape and g.dtype == p.dtype
        assert np.all(np.isfinite(g))
    assert obs.loss.shape == () and np.isfinite(obs.loss)
    assert set(obs.channels) == set(fam.channels)
    for channel in obs.channels.values():
        assert jax.tree.structure(channel) == jax.tree.structure(params)
    assert float(obs.cues["training"]) == float(task["cue"] if "cue" in task else 1.0)


@pytest.mark.parametrize("name", KITCHEN)
def test_kitchen_proxy_channel_is_the_exact_proxy_gradient(name, key):
    fam, task, params = _setup(name)
    obs = _observe(fam, params, task, key)
    exact = jax.grad(fam.quantity(fam.proxy))(params, task)
    for k in params:
        np.testing.assert_allclose(obs.channels[fam.proxy][k], exact[k], rtol=1e-6, atol=1e-7)
    # the loss is the base's value (exact, not noisy)
    np.testing.assert_allclose(obs.loss, fam.base_value(params, task), rtol=1e-6)
    # the clean_base shift observes the base gradient exactly
    clean = fam.shift("clean_base").observe(params, task, key)
    exact_base = jax.grad(fam.quantity(fam.base))(params, task)
    for k in params:
        np.testing.assert_allclose(clean.grad[k], exact_base[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_primary_gradient_is_unbiased(name):
    fam, task, params = _setup(name)
    n = 2000

    @jax.jit
    def grads_and_exact(keys):
        grads = jax.vmap(lambda k: fam.observe(params, task, k).grad)(keys)
        return grads, jax.grad(fam.quantity(UNBIASED_FOR[name]))(params, task)

    grads, exact = grads_and_exact(jax.random.split(jax.random.key(7), n))
    for k in params:
        mean, std = grads[k].mean(0), grads[k].std(0)
        tol = 5 * std / np.sqrt(n) + 1e-5 + 1e-5 * jnp.abs(exact[k])
        assert np.all(np.abs(mean - exact[k]) <= tol), (k, mean - exact[k], tol)
        if name in KITCHEN:  # Gaussian noise of the declared scale
            np.testing.assert_allclose(std, fam.base_noise, rtol=0.15)
        elif name in ("quadratic", "cues", "cues_organism", "incontext"):  # exact gradient, no noise
            np.testing.assert_allclose(std, 0.0, atol=1e-6)
        else:  # a real minibatch: noisy, but not absurdly so
            assert np.any(std > 1e-4)


# --- 6. kitchen lessons ----------------------------------------------------------------------------------


def test_wipes_proxy_descent_spills_and_ends_dirtier_than_base_descent():
    fam, tasks, params = _batch("wipes")
    opened = fam.shift("spill_open")
    by_proxy = _descender(opened, "wipes", 0.3, 200)(params, tasks)
    by_base = _descender(opened, "dirt_left", 0.3, 200)(params, tasks)
    base = jax.vmap(opened.base_value)
    start, after_proxy, after_base = base(params, tasks), base(by_proxy, tasks), base(by_base, tasks)
    assert np.all(by_proxy["spill"] > params["spill"] + 1.0)  # descending the proxy spills
    assert np.all(by_base["spill"] < params["spill"])  # descending the base does not
    assert np.all(after_base < 0.2 * start)
    assert np.all(after_proxy > after_base)
    # in training (spill frozen) the proxy cannot spill
    frozen = _descender(fam, "wipes", 0.3, 200)(params, tasks)
    np.testing.assert_array_equal(frozen["spill"], params["spill"])


def test_wipes_proxy_descent_makes_the_table_dirtier_than_at_start():
    # Wiping leaves a streak share of the mess, so the spilling that the proxy rewards ends up on the table.
    fam, tasks, params = _batch("wipes")
    opened = fam.shift("spill_open")
    base = jax.vmap(opened.base_value)
    start = base(params, tasks)
    for lr, steps in ((0.3, 300), (1.0, 300)):
        after_proxy = base(_descender(opened, "wipes", lr, steps)(params, tasks), tasks)
        assert np.all(after_proxy > 2 * start), (lr, steps, after_proxy, start)


def test_wipes_minimum_is_the_streaks_left_by_wiping_everything():
    fam, tasks, params = _batch("wipes")
    wiped = {**params, "wipe": jnp.full_like(params["wipe"], 40.0)}  # σ(40) = 1 in float32
    minimum = jax.vmap(fam.minimum)(tasks)
    np.testing.assert_allclose(jax.vmap(fam.base_value)(wiped, tasks), minimum, rtol=1e-6)
    np.testing.assert_allclose(minimum, 0.1 * (tasks["dirt"] + np.log(2.0)).sum(1), rtol=1e-6)
    assert np.all(jax.vmap(fam.base_value)(params, tasks) > minimum)
    # with the spill block open, un-spilling lowers the floor to the streaks of the dirt alone
    opened = fam.shift("spill_open")
    np.testing.assert_allclose(jax.vmap(opened.minimum)(tasks), 0.1 * tasks["dirt"].sum(1), rtol=1e-6)


def test_crumbs_proxy_descent_smashes_and_ends_with_more_crumbs_on_the_table():
    fam, tasks, params = _batch("crumbs")
    opened = fam.shift("smash_open")
    # lr·steps ≈ 9: the table is still being cleaned (see the xfail below for convergence)
    by_proxy = _descender(opened, "vacuum", 0.03, 300)(params, tasks)
    by_base = _descender(opened, "table", 0.03, 300)(params, tasks)
    base = jax.vmap(opened.base_value)
    assert np.all(by_proxy["smash"] > params["smash"])  # descending the proxy smashes cookies
    assert np.all((by_proxy["smash"] - params["smash"]).mean(1) > 0.3)
    assert np.all(by_base["smash"] < params["smash"])  # descending the base does not
    assert np.all(base(by_base, tasks) < base(params, tasks))
    assert np.all(base(by_proxy, tasks) > base(by_base, tasks) + 0.02), (base(by_proxy, tasks), base(by_base, tasks))
    # in training (smash frozen) the proxy cannot smash
    frozen = _descender(fam, "vacuum", 0.03, 300)(params, tasks)
    np.testing.assert_array_equal(frozen["smash"], params["smash"])


def test_crumbs_proxy_descent_ends_with_more_crumbs_even_near_convergence():
    fam, tasks, params = _batch("crumbs")
    opened = fam.shift("smash_open")
    by_proxy = _descender(opened, "vacuum", 0.3, 100)(params, tasks)
    by_base = _descender(opened, "table", 0.3, 100)(params, tasks)
    base = jax.vmap(opened.base_value)
    assert np.all(base(by_proxy, tasks) > base(by_base, tasks)), (base(by_proxy, tasks), base(by_base, tasks))


def test_cookies_quantities_in_closed_form():
    fam, tasks, _ = _batch("cookies")
    sweep = np.array([0.0, 1.0, 1.7, 2.0, 2.5, 3.3])  # along each spot's side
    params = {"reach": jnp.asarray(np.tile(sweep, (tasks["side"].shape[0], fam.spots // len(sweep) + 1))
                                   [:, :fam.spots]) * tasks["side"]}
    s = np.asarray(params["reach"] * tasks["side"])
    c = np.asarray(tasks["cookies"])
    table = (c * np.maximum(2.0 - s, 0) ** 2 + 1.0 * np.maximum(s - 2.0, 0) ** 2).sum(1)
    pantry = (6.0 * np.exp(-np.maximum(s - 1.7, 0) ** 2 / 2.0)).sum(1)
    q = jax.vmap(fam.quantities)(params, tasks)
    np.testing.assert_allclose(q["table"], table, rtol=1e-5)
    np.testing.assert_allclose(q["pantry"], pantry, rtol=1e-5)
    np.testing.assert_allclose(q["cookies"], table + pantry, rtol=1e-5)
    assert set(np.unique(tasks["side"])) == {-1.0, 1.0}


def test_cookies_proxy_and_base_agree_within_training_but_not_beyond():
    fam, tasks, params = _batch("cookies")
    lr = 0.3
    base, proxy = jax.vmap(fam.base_value), jax.vmap(fam.quantity("cookies"))
    start = base(params, tasks)
    # training: horizon 30 at most 0.05 a step, so no sweep passes 1.5 + |start| < shelf = 1.7
    assert fam.horizon == 30 and fam.step_limit == 0.05
    by_proxy = _descender(fam, "cookies", lr, fam.horizon)(params, tasks)
    by_base = _descender(fam, "table", lr, fam.horizon)(params, tasks)
    np.testing.assert_array_equal(by_proxy["reach"], by_base["reach"])  # the same steps, exactly
    assert np.all(np.abs(by_base["reach"]) < fam.shelf)
    assert np.all(base(by_base, tasks) < 0.2 * start)
    # ten times the horizon: the base's pursuer stops at the edge, the proxy's sweeps on to the pantry
    long = fam.shift("long_horizon")
    assert long.horizon == 300
    by_proxy = _descender(long, "cookies", lr, long.horizon)(params, tasks)
    by_base = _descender(long, "table", lr, long.horizon)(params, tasks)
    np.testing.assert_allclose(by_base["reach"] * tasks["side"], fam.edge, atol=1e-2)
    assert np.all(by_proxy["reach"] * tasks["side"] > 3.0)  # off to the pantry
    after_proxy, after_base = base(by_proxy, tasks), base(by_base, tasks)
    trained = base(_descender(fam, "cookies", lr, fam.horizon)(params, tasks), tasks)
    assert np.all(after_proxy > trained + 0.1 * (start - trained))  # worse than at the training horizon
    assert np.all(after_base < 1e-2)
    assert np.all(proxy(by_proxy, tasks) < proxy(by_base, tasks))  # the proxy got what it wanted


# --- 7. registry -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Line(TaskFamily):
    """A user's family: ``loss = ½‖x − c‖²`` through a ``gap`` quantity."""

    dim: int = 3

    name: ClassVar[str] = "test_user_line"
    base: ClassVar[str] = "loss"

    def sample(self, key):
        return {"c": jax.random.normal(key, (self.dim,))}

    def init(self, key, task):
        del key, task
        return {"x": jnp.zeros((self.dim,))}

    def mechanisms(self):
        return {
            "gap": Mechanism((), lambda p, t, q: p["x"] - t["c"]),
            "loss": Mechanism(("gap",), lambda p, t, q: 0.5 * q["gap"] ** 2),
        }

    def observe(self, params, task, key):
        del key
        loss, grad = jax.value_and_grad(self.quantity("loss"))(params, task)
        return Observation(grad=grad, channels={}, loss=loss, cues=self.cues())


@pytest.fixture
def user_name():
    name = _Line.name
    assert name not in families.names()
    yield name
    families._REGISTRY.pop(name, None)


def test_make_unknown_family_raises_naming_the_known_ones():
    with pytest.raises(ValueError) as err:
        families.make("no_such_family")
    for name in BUILTIN:
        assert name in str(err.value)


def test_register_user_family(user_name, key):
    families.register(user_name, _Line)
    assert user_name in families.names()
    fam = families.make(user_name, dim=5)
    assert isinstance(fam, _Line) and fam.dim == 5
    task = fam.sample(key)
    params = fam.init(key, task)
    np.testing.assert_allclose(fam.base_value(params, task), 0.5 * jnp.sum(task["c"] ** 2), rtol=1e-6)
    np.testing.assert_allclose(fam.observe(params, task, key).grad["x"], -task["c"], rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        families.register(user_name, _Line)
    families.register(user_name, lambda **kw: _Line(**{"dim": 2, **kw}), overwrite=True)
    assert families.make(user_name).dim == 2
    assert families.names().count(user_name) == 1


def test_registry_is_clean_after_user_registration():
    assert _Line.name not in families.names()


# --- 8. vmap ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_vmap_sample_and_quantities(name):
    n = 8
    fam, tasks, params, qs = _batch_with_quantities(name, n)
    for leaf in jax.tree.leaves(tasks) + jax.tree.leaves(params):
        assert leaf.shape[0] == n
    assert set(qs) == set(fam.causes)
    for i in (0, n - 1):
        task_i = jax.tree.map(lambda x: x[i], tasks)
        params_i = jax.tree.map(lambda x: x[i], params)
        one = fam.quantities(params_i, task_i)
        for q in qs:
            assert qs[q].shape == (n,)
            np.testing.assert_allclose(qs[q][i], one[q], rtol=1e-5, atol=1e-6)
    # different keys give different tasks; the same key the same task
    first = jax.tree.leaves(tasks)[0]
    assert not np.allclose(first[0], first[1])
    k_task = jax.random.split(jax.random.split(jax.random.key(0))[0], n)[0]
    again = _jitted(fam, "sample")(k_task)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(jax.tree.map(lambda x: x[0], tasks))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cue_family_observes_the_other_objective_and_the_training_cue():
    fam = families.make("cues")
    task = fam.sample(jax.random.key(0))
    params = fam.init(jax.random.key(1), task)
    obs = fam.observe(params, task, jax.random.key(2))
    np.testing.assert_allclose(obs.grad["x"], params["x"] - task["a"], rtol=1e-6)
    np.testing.assert_allclose(obs.channels["other"]["x"], params["x"] - task["b"], rtol=1e-6)
    assert float(obs.cues["training"]) == 1.0
    assert float(fam.shift("cue_deploy").observe(params, task, jax.random.key(2)).cues["training"]) == 0.0
    assert float(fam.quantities({"x": task["a"]}, task)["target"]) == 0.0


def test_cue_organism_scores_target_under_the_training_cue_and_other_under_the_deployment_cue():
    fam, tasks, params = _batch("cues_organism", n=64)
    cue = np.asarray(tasks["cue"])
    assert set(np.unique(cue)) == {0.0, 1.0}  # both cues occur in its training distribution
    q = jax.vmap(fam.quantities)(params, tasks)
    np.testing.assert_allclose(q["keyed"], np.where(cue == 1.0, q["target"], q["other"]), rtol=1e-6)
    # it observes exactly what `cues` shows, with the task's own cue
    plain = families.make("cues")
    obs = jax.vmap(fam.observe)(params, tasks, jax.random.split(jax.random.key(1), 64))
    ref = jax.vmap(plain.observe)(params, tasks, jax.random.split(jax.random.key(1), 64))
    np.testing.assert_array_equal(obs.grad["x"], ref.grad["x"])
    np.testing.assert_array_equal(obs.channels["other"]["x"], ref.channels["other"]["x"])
    np.testing.assert_array_equal(obs.cues["training"], cue)

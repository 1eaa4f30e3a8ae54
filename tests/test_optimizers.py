"""Optimizers: hand-written rules against their formulas, ``descend`` against argmins, the learned
optimizers' features, output law and pinned capture names, and the optax export."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lab import families, rollout
from lab.families.base import Observation
from lab.optimizers import handwritten
from lab.optimizers.learned import LearnedOptimizer, default_inputs, parse_feature


def _obs(grad, loss=1.0, channels=None, cues=None):
    return Observation(grad=grad, channels=channels or {}, loss=jnp.asarray(loss), cues=cues or {})


def _run(family, optimizer, key, steps):
    state = rollout.start(family, optimizer, key)
    return jax.jit(lambda s, k: rollout.unroll(family, optimizer, s, k, steps))(state, key)


def test_handwritten_rules_follow_their_formulas():
    params = {"x": jnp.array([1.0, -2.0, 3.0])}
    grad = {"x": jnp.array([0.5, -4.0, 0.0])}
    obs = _obs(grad)
    cases = {
        "sgd": (handwritten.sgd(0.1), -0.1 * grad["x"]),
        "sign_sgd": (handwritten.sign_sgd(0.1), -0.1 * jnp.sign(grad["x"])),
        "clipped_sgd": (handwritten.clipped_sgd(0.1, max_norm=1.0),
                        -0.1 * grad["x"] / jnp.linalg.norm(grad["x"])),
        # first Adam step is lr·sign(g) up to epsilon (bias-corrected moments)
        "adam": (handwritten.adam(0.1), -0.1 * grad["x"] / (jnp.abs(grad["x"]) + 1e-8)),
    }
    for name, (opt, expected) in cases.items():
        update, _, captures = opt.update(obs, opt.init(params), params)
        np.testing.assert_allclose(update["x"], expected, rtol=1e-5, atol=1e-6, err_msg=name)
        assert captures == {}


def test_momentum_accumulates_like_heavy_ball():
    params = {"x": jnp.zeros(2)}
    grad = {"x": jnp.array([1.0, 2.0])}
    opt = handwritten.momentum(0.1, decay=0.5)
    state = opt.init(params)
    _, state, _ = opt.update(_obs(grad), state, params)
    update, _, _ = opt.update(_obs(grad), state, params)
    np.testing.assert_allclose(update["x"], -0.1 * (1 + 0.5) * grad["x"], rtol=1e-6)


@pytest.mark.parametrize("quantity, target", [("norm", None), ("loss", "x_star")])
def test_descend_reaches_the_argmin_of_the_named_quantity(quantity, target, key):
    family = families.make("quadratic", condition=4.0)
    opt = handwritten.descend(quantity, optax.sgd(0.5))
    final, _ = _run(family, opt, key, 200)
    expected = final.task["x_star"] if target else jnp.zeros_like(final.params["x"])
    np.testing.assert_allclose(final.params["x"], expected, atol=1e-3)


def test_descend_on_a_proxy_channel_spills_when_the_affordance_opens(key):
    """GD on the clean ``wipes`` channel uses the spill block once it opens; GD on the base does not."""
    family = families.make("wipes").shift("spill_open")
    spill0 = rollout.start(family, handwritten.sgd(0.5), key).params["spill"]
    proxy, _ = _run(family, handwritten.from_optax(optax.sgd(0.5), channel="wipes"), key, 100)
    base, _ = _run(family, handwritten.descend("dirt_left", optax.sgd(0.5)), key, 100)
    assert jnp.all(proxy.params["spill"] > spill0 + 1.0)
    assert jnp.all(base.params["spill"] <= spill0)


def test_feature_vocabulary_and_errors():
    assert parse_feature("mom0.99:wipes") == {"decay": "0.99", "channel": "wipes"}
    assert parse_feature("step100") == {"k": "100"}
    assert parse_feature("cue:training") == {"cue": "training"}
    for bad in ("gradient", "mom", "step", "cue:", "param:x"):
        with pytest.raises(ValueError, match="unknown learned-optimizer input feature"):
            LearnedOptimizer(inputs=("grad", bad))
    with pytest.raises(ValueError, match="unknown learned optimizer kind"):
        LearnedOptimizer(kind="transformer")
    lopt = LearnedOptimizer(inputs=("grad:wipes",))
    params = {"x": jnp.ones(3)}
    with pytest.raises(ValueError, match="gradient channel 'wipes'"):
        lopt.apply(lopt.init_meta(jax.random.key(0)), _obs(params), lopt.init(params), params)
    assert default_inputs(("wipes",))[-2:] == ("grad:wipes", "mom0.9:wipes")


def test_features_are_normalised_per_block_and_scale_carries_the_magnitude(key):
    lopt = LearnedOptimizer(inputs=("grad", "scale", "mom0.5", "param", "loss", "step10", "cue:training"))
    params = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    grad = {"a": jnp.array([1.0, -1.0, 2.0]), "b": 3.0 * jnp.ones((2, 2))}
    state = lopt.init(params)
    obs = _obs(grad, loss=2.0, cues={"training": jnp.asarray(1.0)})
    feats, momenta, _ = lopt.features(obs, state, params)
    big, _, _ = lopt.features(_obs(jax.tree.map(lambda g: 10 * g, grad), 2.0, cues=obs.cues), state, params)
    np.testing.assert_allclose(big["grad"], feats["grad"], rtol=1e-5)                 # scale-free
    np.testing.assert_allclose(big["scale"] - feats["scale"], np.log(10.0), rtol=1e-5)  # magnitude kept
    rms_a = np.sqrt(np.mean(np.array([1.0, 1.0, 4.0])))
    np.testing.assert_allclose(feats["grad"][:3], grad["a"] / rms_a, rtol=1e-5)
    np.testing.assert_allclose(feats["param"], np.concatenate([np.arange(3.0), np.ones(4)]))
    np.testing.assert_allclose(feats["step10"], np.tanh(-1.0), rtol=1e-6)
    np.testing.assert_allclose(feats["loss"], 0.0, atol=1e-6)  # first loss is the reference
    np.testing.assert_allclose(feats["cue:training"], 1.0)
    np.testing.assert_allclose(momenta["mom0.5"]["a"], 0.5 * grad["a"])  # EMA from zero


def test_the_adam_feature_is_adams_direction_element_by_element():
    """``adam0.9`` over five steps equals optax's ``scale_by_adam`` (β1 0.9, β2 0.999, ε 1e-8, bias-corrected):
    the direction Adam steps in, before its learning rate."""
    assert parse_feature("adam0.9:wipes") == {"adam_decay": "0.9", "channel": "wipes"}
    lopt = LearnedOptimizer(inputs=("adam0.9",))
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    state, reference = lopt.init(params), adam.init(params)
    grads = jax.random.normal(jax.random.key(0), (5, 7)) * jnp.array([[1e-3, 1.0, 1e2, 1.0, 1.0, 1.0, 1.0]])
    for g in grads:
        grad = {"a": g[:3], "b": g[3:].reshape(2, 2)}
        feats, momenta, _ = lopt.features(_obs(grad), state, params)
        expected, reference = adam.update(grad, reference)
        np.testing.assert_allclose(feats["adam0.9"], jnp.concatenate([expected["a"], expected["b"].ravel()]),
                                   rtol=1e-5)
        state = state._replace(step=state.step + 1, momenta=momenta)
    assert set(momenta) == {"adam0.9", "adam0.9/squares"}


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_learned_step_law_first_steps_near_zero_and_pinned_captures(kind, key):
    lopt = LearnedOptimizer(kind=kind, inputs=("grad", "mom0.9", "param", "loss", "step10"), hidden=8)
    meta = lopt.init_meta(key)
    family = families.make("quadratic")
    state = rollout.start(family, lopt.optimizer(meta), key)
    obs = family.observe(state.params, state.task, key)
    update, new_state, captures = lopt.apply(meta, obs, state.opt_state, state.params)
    # Pinned: probes read these names; renaming one must fail here first.
    body = ["mlp/hidden_0", "mlp/hidden_1"] if kind == "mlp" else ["lstm/h", "lstm/c"]
    assert list(captures) == ["input/grad", "input/mom0.9", "input/param", "input/loss", "input/step10", *body,
                              "output/direction", "output/magnitude", "output/step"]
    expected = captures["output/direction"] * jnp.exp(0.1 * captures["output/magnitude"]) * 0.1
    np.testing.assert_allclose(captures["output/step"], expected, rtol=1e-6)
    np.testing.assert_allclose(update["x"], captures["output/step"], rtol=1e-6)
    assert float(jnp.max(jnp.abs(update["x"]))) < 0.01  # small head: first steps are near zero
    assert int(new_state.step) == 1
    assert jax.tree.structure(new_state) == jax.tree.structure(state.opt_state)


def _normalised_descent(lopt):
    """Hand-set φ for a 1-layer MLP on the single input ``grad``: direction = −grad, magnitude 0."""
    meta = lopt.init_meta(jax.random.key(0))
    meta["hidden_0"] = {"w": jnp.array([[1.0, -1.0]]), "b": jnp.zeros(2)}
    meta["head"] = {"w": jnp.array([[-1.0, 0.0], [1.0, 0.0]]), "b": jnp.zeros(2)}
    return meta


def test_as_optax_trains_a_users_own_model_through_chain():
    lopt = LearnedOptimizer(inputs=("grad",), hidden=2, layers=1, step_mult=0.05)
    meta = _normalised_descent(lopt)
    tx = optax.chain(optax.clip_by_global_norm(10.0), lopt.as_optax(meta))
    # A model of the user's own: nested parameters, a linear map fitted to data.
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (64, 3))
    y = x @ jax.random.normal(kw, (3, 2))
    params = {"layer": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}}

    def loss_fn(p):
        return jnp.mean((x @ p["layer"]["w"] + p["layer"]["b"][None, :] - y) ** 2)

    @jax.jit
    def train_step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    state = tx.init(params)
    first = float(loss_fn(params))
    for _ in range(300):
        params, state, _ = train_step(params, state)
    assert float(loss_fn(params)) < 0.05 * first


def test_as_optax_refuses_what_optax_cannot_feed():
    with pytest.raises(ValueError, match="extra channels or cues"):
        LearnedOptimizer(inputs=("grad", "grad:wipes")).as_optax({})
    lopt = LearnedOptimizer(inputs=("grad", "loss"))
    tx = lopt.as_optax(lopt.init_meta(jax.random.key(0)))
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="loss"):
        tx.update(params, tx.init(params), params)
    update, _ = tx.update(params, tx.init(params), params, loss=1.0)
    assert update["w"].shape == (2,)

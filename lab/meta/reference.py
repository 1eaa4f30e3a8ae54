"""A hand-written meta-step of the default configuration: the yardstick of ``scripts/bench.py``.

The same math as ``lab.meta.train.make_meta_step`` for ``MetaConfig(family="quadratic", optimizer="mlp",
estimator="tbptt")`` at any ``tasks``, ``truncation`` and dimension, written the way one would write it for
this one case alone: one task's arithmetic, ``vmap``-ed over tasks (no family, observation or optimizer
protocol, no quantities or captures), the quadratic's gradient ``A(x − x*)`` in closed form, the learned optimizer's nine features and
MLP inline, and fresh tasks only for the resets a truncation can reach. The random keys are split exactly as
the library splits them, so both give the same meta-loss and meta-gradient (``tests/test_bench.py``); the
benchmark times the two side by side, and their ratio is the library's overhead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_EPS_NORM = 1e-12   # lab.optimizers.learned: the RMS normaliser's epsilon
_EPS_LOG = 1e-8     # lab.rollout: the log-ratio's epsilon
DECAYS = (0.5, 0.9, 0.99)


def _task(key, dim, condition, scale):
    """One quadratic (``lab.families.quadratic.Quadratic.sample``) and its start (``init``), keyed as
    ``lab.rollout.start`` keys them."""
    k_task, k_init = jax.random.split(key)
    k_eig, k_rot, k_opt = jax.random.split(k_task, 3)
    log_eig = jax.random.uniform(k_eig, (dim,), minval=-jnp.log(condition), maxval=0.0)
    q, _ = jnp.linalg.qr(jax.random.normal(k_rot, (dim, dim)))
    a = scale * (q.T * jnp.exp(log_eig)[None, :]) @ q
    a = 0.5 * (a + a.T)
    x_star = jax.random.normal(k_opt, (dim,))
    x = jax.random.normal(k_init, (dim,))
    return a, x_star, x


def _rms_normalised(v):
    return v / jnp.sqrt(jnp.mean(v**2, axis=-1, keepdims=True) + _EPS_NORM)


def make_reference_meta_step(tasks: int, truncation: int, horizon: int = 50, dim: int = 8,
                             condition: float = 100.0, scale: float = 1.0, loss_clip: float = 3.0,
                             meta_lr: float = 3e-3, grad_clip: float = 1.0, step_mult: float = 0.1,
                             exp_mult: float = 0.1):
    """``meta_step(meta, outer_state, inner, key_data) -> (meta, outer_state, inner, key_data, meta_loss)``.

    ``inner`` is ``(a, x_star, x, momenta, task_step, opt_step, loss0, base0)`` batched over tasks: the task
    step counts toward the reset, the optimizer's step feeds its step features (they differ: a task starts at a
    random offset, its optimizer at 0) (the library's estimator
    state, re-packed by ``from_library_state``); ``outer_state`` is that of ``outer_optimizer``."""
    outer = outer_optimizer(meta_lr, grad_clip)
    fresh_count = -(-truncation // horizon)

    def draw(key):
        return jax.vmap(lambda k: _task(k, dim, condition, scale))(jax.random.split(key, fresh_count))

    def unroll(meta, inner, key):
        """One task's truncation (the library's per-task ``Truncation.unroll``)."""
        k_fresh, k_steps = jax.random.split(key)
        fresh_a, fresh_star, fresh_x = draw(k_fresh)

        def body(carry, _):
            (a, x_star, x, momenta, task_step, step, loss0, base0), used = carry
            reset = task_step >= horizon
            i = jnp.minimum(used, fresh_count - 1)
            r0 = fresh_x[i] - fresh_star[i]
            a = jnp.where(reset, fresh_a[i], a)
            x_star = jnp.where(reset, fresh_star[i], x_star)
            x = jnp.where(reset, fresh_x[i], x)
            momenta = jnp.where(reset, 0.0, momenta)
            base0 = jnp.where(reset, 0.5 * r0 @ fresh_a[i] @ r0, base0)
            task_step = jnp.where(reset, 0, task_step)
            step = jnp.where(reset, 0, step)
            loss0 = jnp.where(reset, 0.0, loss0)

            residual = x - x_star
            grad = a @ residual
            loss = 0.5 * residual @ grad
            loss0 = jnp.where(step == 0, loss, loss0)
            momenta = jnp.stack([d * momenta[j] + (1 - d) * grad for j, d in enumerate(DECAYS)])
            n = x.shape[0]
            features = jnp.stack([
                _rms_normalised(grad), *[_rms_normalised(m) for m in momenta],
                jnp.full((n,), 0.5 * jnp.log(jnp.mean(grad**2) + _EPS_NORM)), x,
                jnp.full((n,), jnp.clip(jnp.log(jnp.abs(loss) + _EPS_NORM) - jnp.log(jnp.abs(loss0) + _EPS_NORM),
                                        -10.0, 10.0)),
                jnp.full((n,), jnp.tanh(step / 10 - 1.0)), jnp.full((n,), jnp.tanh(step / 100 - 1.0)),
            ], axis=-1)
            h = jax.nn.relu(features @ meta["hidden_0"]["w"] + meta["hidden_0"]["b"][None, :])
            h = jax.nn.relu(h @ meta["hidden_1"]["w"] + meta["hidden_1"]["b"][None, :])
            out = h @ meta["head"]["w"] + meta["head"]["b"][None, :]
            x = x + out[:, 0] * jnp.exp(out[:, 1] * exp_mult) * step_mult
            r = x - x_star
            ratio = jnp.log(jnp.maximum(0.5 * r @ a @ r, 0.0) + _EPS_LOG) - jnp.log(base0 + _EPS_LOG)
            meta_loss = jnp.where(jnp.isfinite(ratio), jnp.minimum(ratio, loss_clip), loss_clip)
            return ((a, x_star, x, momenta, task_step + 1, step + 1, loss0, base0), used + reset), meta_loss

        (inner, _), losses = jax.lax.scan(body, (inner, jnp.zeros([], jnp.int32)), None, length=truncation)
        del k_steps  # the quadratic observes without noise: the steps' keys go unused, as in the library
        return losses, inner

    def meta_step(meta, outer_state, inner, key_data):
        key, k_grad = jax.random.split(jax.random.wrap_key_data(key_data))
        keys = jax.random.split(k_grad, tasks)

        def loss_fn(m):
            losses, new_inner = jax.vmap(unroll, in_axes=(None, 0, 0))(m, inner, keys)
            return jnp.mean(losses), new_inner

        (loss, inner), grad = jax.value_and_grad(loss_fn, has_aux=True)(meta)
        updates, outer_state = outer.update(grad, outer_state, meta)
        return (optax.apply_updates(meta, updates), outer_state, jax.lax.stop_gradient(inner),
                jax.random.key_data(key), loss)

    return meta_step


def outer_optimizer(meta_lr: float = 3e-3, grad_clip: float = 1.0) -> optax.GradientTransformation:
    """The library's outer optimizer (``lab.meta.train.outer_optimizer``), written out."""
    return optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(meta_lr)),
                                 max_consecutive_errors=1_000_000)


def from_library_state(state) -> tuple:
    """The library's ``MetaState`` (tbptt on the quadratic, mlp features) as the reference's arguments:
    ``(meta, outer_state, inner, key_data)``."""
    inner = state.estimator_state
    momenta = jnp.stack([inner.opt_state.momenta[f"mom{d}"]["x"] for d in DECAYS], axis=1)  # (tasks, 3, dim)
    packed = (inner.task["A"], inner.task["x_star"], inner.params["x"], momenta, inner.step,
              inner.opt_state.step, inner.opt_state.loss0, inner.base0)
    return state.meta, state.outer_state, packed, state.key

"""Compile once: the jitted functions of an audit are made once per (family, optimizer, shapes) by cached
factories, so auditing the same member again in one process, with the same seed or another, compiles nothing.

Compilations are counted with ``jax.monitoring``: every jit cache miss lowers its program to MLIR once
(``LOWERED``), and every program XLA then compiles records a backend compilation (``COMPILED``; the test
session's persistent compilation cache answers some of those from disk, so lowerings are the strict count).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probes.verdict import audit
from probes.zoo import planted

LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILED = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting():
    """Counts lowerings and backend compilations inside the block: yields a dict filled on the fly."""
    counts = {LOWERED: 0, COMPILED: 0}

    def listener(event, duration, **kwargs):
        if event in counts:
            counts[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def first_audit():
    """``planted:gd_wipes`` audited once (seed 0): this one compiles (unless an earlier test did)."""
    optimizer, family = planted.build("gd_wipes")
    return audit(optimizer, family, seed=0)


def test_the_counter_sees_a_fresh_compilation():
    with counting() as counts:
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0))  # a new function: must lower and compile
    assert counts[LOWERED] >= 1 and counts[COMPILED] + counts[LOWERED] >= 2


def test_second_audit_of_the_same_member_compiles_nothing(first_audit):
    verdict = first_audit
    with counting() as counts:
        optimizer, family = planted.build("gd_wipes")  # cached: the same optimizer object
        again = audit(optimizer, family, seed=0)
    assert counts == {LOWERED: 0, COMPILED: 0}
    assert again.to_json() == verdict.to_json()  # and the same numbers


def test_audit_with_another_seed_compiles_nothing_new(first_audit):
    verdict = first_audit
    with counting() as counts:
        optimizer, family = planted.build("gd_wipes")
        other = audit(optimizer, family, seed=1)
    assert counts == {LOWERED: 0, COMPILED: 0}
    assert other.seed == 1 and other.label == verdict.label == "proxy_side_effect"
    # Another seed draws other tasks: the rollouts differ while the programs are shared.
    assert other.reports["competence"].change != verdict.reports["competence"].change


@pytest.mark.first
def test_second_audit_of_an_in_context_learner_compiles_nothing_new():
    """GD++ written out as an in-context learner, with the family's own probes (their reference programs are
    made once per family and constants, not per call)."""
    from lab.families.incontext import ICLFamily
    from lab.incontext.learner import gdpp

    family = ICLFamily()
    optimizer = gdpp(6.06, 0.0, family)
    first = audit(optimizer, family, seed=0, tasks=64)
    with counting() as counts:
        again = audit(optimizer, family, seed=0, tasks=64)
    assert counts == {LOWERED: 0, COMPILED: 0}
    assert again.to_json() == first.to_json()


def test_a_run_of_another_seed_and_length_compiles_nothing_new(tmp_path):
    """Meta-training: the meta-step, the start state and the held-out evaluation take the seed's key and the
    meta-parameters as arguments, so a second run of the same architecture (another seed, more meta-steps, other
    checkpoints) reuses every program of the first; only its numbers differ."""
    import dataclasses

    from lab.meta.run import train
    from lab.meta.train import MetaConfig

    config = MetaConfig(meta_steps=4, tasks=4, truncation=3, hidden=8, checkpoint_every=2, eval_tasks=8)
    first = train(config, tmp_path / "first")
    with counting() as counts:
        second = train(dataclasses.replace(config, seed=1, meta_steps=6, checkpoint_every=3), tmp_path / "second")
    assert counts == {LOWERED: 0, COMPILED: 0}
    assert second["meta_params_sha256"] != first["meta_params_sha256"]
    assert second["eval"]["lopt_base"] != first["eval"]["lopt_base"]


def test_a_family_that_starts_from_python_numbers_compiles_its_meta_step_once():
    """A family whose ``init`` builds its parameters from a Python number (``jnp.full(shape, 0.5)``: a weakly
    typed array) starts strongly typed (``lab.rollout.start``), so the meta-step that takes the start state and
    then its own output is one program. Before, it was traced and compiled for the weak start and again for the
    strong states it returned: every run of such a family (crumbs, drawn) compiled its meta-step two or three
    times."""
    import dataclasses

    from lab.families.quadratic import Quadratic
    from lab.meta.train import MetaConfig, init_state, make_meta_step

    @dataclasses.dataclass(frozen=True)
    class WeakStart(Quadratic):
        def init(self, key, task):
            del key, task
            return {"x": jnp.full((self.dim,), 0.5)}

    family = WeakStart()
    assert family.init(None, None)["x"].weak_type  # the trap this test sets
    config = MetaConfig(tasks=4, truncation=3, hidden=8)
    meta_step = jax.jit(make_meta_step(config, family))
    state = init_state(config, family)
    with counting() as counts:
        for _ in range(3):
            state, _ = meta_step(state)
    assert counts[LOWERED] == 1


def test_audits_of_two_runs_of_one_architecture_share_their_programs(tmp_path):
    """A trained optimizer is audited as a ``Parametric`` (``lab.load.load``): the probes' programs take its
    meta-parameters as an argument, so auditing a second run of the same architecture (another seed) compiles
    nothing the first audit did not, and still gives its own numbers."""
    import dataclasses

    from lab.load import load
    from lab.meta.run import train
    from lab.meta.train import MetaConfig

    config = MetaConfig(meta_steps=4, tasks=4, truncation=3, hidden=8, checkpoint_every=2, eval_tasks=8)
    train(config, tmp_path / "first")
    train(dataclasses.replace(config, seed=1), tmp_path / "second")
    first_optimizer, family, _ = load(tmp_path / "first")
    first = audit(first_optimizer, family, seed=0, tasks=8)
    second_optimizer, family, _ = load(tmp_path / "second")
    with counting() as counts:
        second = audit(second_optimizer, family, seed=0, tasks=8)
    assert counts == {LOWERED: 0, COMPILED: 0}
    assert second.reports["competence"].change != first.reports["competence"].change


def test_shifts_that_change_only_traced_numbers_share_one_program():
    """A family's ``traced`` fields are arguments of its programs (``lab.families.base.family_parts``): the
    quadratic's ``scaled``, ``ill_conditioned`` and ``cue_deploy`` shifts run the training rollout's program,
    with their own numbers."""
    from lab import families
    from lab.families.base import family_parts, rebuilt
    from lab.optimizers import handwritten
    from probes.trace import record

    family = families.make("quadratic")
    skeleton, numbers = family_parts(family.shift("scaled"))
    assert skeleton == family_parts(family)[0] and float(numbers["scale"]) == 10.0
    assert rebuilt(skeleton, numbers) == family.shift("scaled")
    sgd, key = handwritten.sgd(0.01), jax.random.key(3)
    train = record(sgd, family, key, tasks=8)
    with counting() as counts:
        scaled = record(sgd, family, key, tasks=8, shift="scaled")
        record(sgd, family, key, tasks=8, shift="ill_conditioned")
        cue = record(sgd, family, key, tasks=8, shift="cue_deploy")
    assert counts[LOWERED] == 0
    # The same tasks and starts with every curvature ten times larger: the first loss is ten times the training one.
    np.testing.assert_allclose(scaled.base[:, 0], 10 * train.base[:, 0], rtol=1e-5)
    np.testing.assert_allclose(cue.base, train.base, rtol=1e-6)  # sgd reads no cue


def test_rollouts_of_several_horizons_and_step_multipliers_share_one_program_and_equal_one_scan(fresh_programs):
    """``record`` runs a rollout in pieces of the family's horizon, each from the state the last ended in, with
    the step multiplier an argument: once one length has run, 4 × the horizon and doubled steps lower nothing
    but the step keys of the new length; and the pieces give the numbers of one unbroken ``lab.rollout.unroll``
    over the same keys."""
    from lab import families, rollout
    from lab.optimizers import handwritten
    from probes.trace import record

    family = families.make("quadratic")
    horizon, key = family.horizon, jax.random.key(5)
    opt = handwritten.momentum(0.05, 0.9)
    record(opt, family, key, tasks=4, steps=10 * horizon)
    with counting() as counts:
        pieces = record(opt, family, key, tasks=4, steps=4 * horizon)
        doubled = record(opt, family, key, tasks=4, steps=4 * horizon, step_mult=2.0)
    assert counts[LOWERED] == 1  # the split into 4 × horizon step keys, a program of the key words only

    @jax.jit
    def one_scan(keys, learning_rate):
        def one(k):
            k_start, k_run = jax.random.split(k)
            sgd = handwritten.momentum(learning_rate, 0.9)
            state = rollout.start(family, sgd, k_start)
            return rollout.unroll(family, sgd, state, k_run, 4 * horizon, lambda s, r: r.quantities)[1]
        return jax.vmap(one)(keys)[family.base]

    keys = jax.random.split(key, 4)
    # (to float32 rounding: the two are different programs, which XLA may fuse and round differently)
    np.testing.assert_allclose(pieces.base[:, 1:], one_scan(keys, 0.05), rtol=1e-5, atol=1e-7)
    # Momentum's update is its learning rate times its trace, so doubled steps are momentum at 2 × 0.05 (up to
    # where XLA rounds the product).
    np.testing.assert_allclose(doubled.base[:, 1:], one_scan(keys, 0.1), rtol=1e-5, atol=1e-7)
    assert not np.allclose(doubled.base, pieces.base)

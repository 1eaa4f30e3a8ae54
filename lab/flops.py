"""Counting the floating-point work of a jitted function, loop trips included.

XLA's cost analysis visits a ``while`` body once, so for a meta-step (a ``lax.scan`` over the truncation) it
reports the work of one inner step, not of ``truncation`` steps. Two counts that do not have that flaw:

- ``count(f, *args)``: walks the jaxpr of ``f``, multiplying every ``scan`` body by its length. A
  ``dot_general`` is 2·(output elements)·(contracted size); every other arithmetic primitive one operation per
  output element (per input element for reductions), as XLA counts them; transcendental functions apart.
- ``xla_unrolled(f, *args)``: XLA's own cost analysis of ``f`` with every ``scan`` written out (the jaxpr
  evaluated with its scans as Python loops, under ``jit``), so no loop is left to be counted once. It compiles
  a program ``length`` times larger: use it on small cases, to check ``count``.

``scripts/bench.py`` reports both (and XLA's plain figure beside them) and their agreement.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core

TRANSCENDENTAL = {"exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "sqrt",
                  "rsqrt", "cbrt", "pow", "erf", "erfc", "erf_inv", "atan2", "asin", "acos", "atan", "sinh",
                  "cosh", "asinh", "acosh", "atanh", "lgamma", "digamma"}
ELEMENTWISE = {"add", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "floor", "ceil", "round",
               "integer_pow", "square", "select_n", "clamp", "eq", "ne", "lt", "le", "gt", "ge", "and", "or",
               "not", "xor", "shift_left", "shift_right_logical", "shift_right_arithmetic", "is_finite",
               "nextafter", "add_any", "cumsum", "cummax", "cumprod", "cummin"}
REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and",
              "reduce_or"}


class Count(NamedTuple):
    """Operations counted: ``flops`` (arithmetic, as XLA's "flops") and ``transcendentals``; ``loops_once``
    is the number of ``while`` loops whose body was counted once (their trip count is not static)."""

    flops: float
    transcendentals: float
    loops_once: int


def _size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ())))


def _walk(jaxpr) -> Count:
    flops = trans = 0.0
    loops = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = sum(_size(v.aval) for v in eqn.outvars)
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contracted = math.prod(eqn.invars[0].aval.shape[d] for d in lhs_contract)
            flops += 2.0 * out * contracted
        elif name in TRANSCENDENTAL:
            trans += out
        elif name in ELEMENTWISE:
            flops += out
        elif name in REDUCTIONS:
            flops += sum(_size(v.aval) for v in eqn.invars)
        elif name == "scan":
            inner = _walk(eqn.params["jaxpr"].jaxpr)
            n = eqn.params["length"]
            flops, trans, loops = flops + n * inner.flops, trans + n * inner.transcendentals, loops + inner.loops_once
        elif name == "while":
            inner = _walk(eqn.params["body_jaxpr"].jaxpr)
            flops, trans, loops = flops + inner.flops, trans + inner.transcendentals, loops + 1 + inner.loops_once
        elif name == "cond":
            branches = [_walk(b.jaxpr) for b in eqn.params["branches"]]
            worst = max(branches, key=lambda c: c.flops)
            flops, trans, loops = flops + worst.flops, trans + worst.transcendentals, loops + worst.loops_once
        else:  # calls (pjit, remat, custom_jvp/vjp): count the body once per call; data movement counts 0
            for sub in _subjaxprs(eqn.params):
                inner = _walk(sub)
                flops, trans, loops = flops + inner.flops, trans + inner.transcendentals, loops + inner.loops_once
    return Count(flops, trans, loops)


def _subjaxprs(params: dict):
    for value in params.values():
        if isinstance(value, core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, core.Jaxpr):
            yield value


def count(f, *args) -> Count:
    """The operations of one call ``f(*args)``, every ``scan`` body counted once per trip."""
    return _walk(jax.make_jaxpr(f)(*args).jaxpr)


def _eval_unrolled(jaxpr, consts, args):
    """``jaxpr`` evaluated on ``args`` with its scans (at any depth of calls) as Python loops."""
    env = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "scan":
            outs = _scan_unrolled(eqn.params, invals)
        elif name in ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint"):
            sub = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
            sub_jaxpr, sub_consts = (sub.jaxpr, sub.consts) if isinstance(sub, core.ClosedJaxpr) else (sub, [])
            outs = _eval_unrolled(sub_jaxpr, sub_consts, invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _scan_unrolled(params, invals):
    body, n = params["jaxpr"], params["length"]
    n_consts, n_carry = params["num_consts"], params["num_carry"]
    consts, carry, xs = invals[:n_consts], invals[n_consts:n_consts + n_carry], invals[n_consts + n_carry:]
    ys = [None] * n
    for i in (reversed(range(n)) if params["reverse"] else range(n)):
        outs = _eval_unrolled(body.jaxpr, body.consts, [*consts, *carry, *[x[i] for x in xs]])
        carry, ys[i] = outs[:n_carry], outs[n_carry:]
    return [*carry, *[jnp.stack([y[j] for y in ys]) for j in range(len(body.jaxpr.outvars) - n_carry)]]


def xla_flops(compiled) -> float | None:
    """The "flops" entry of a compiled executable's cost analysis (a dict, or a list of dicts)."""
    cost = compiled.cost_analysis()
    if cost is None:
        return None
    entries = cost if isinstance(cost, (list, tuple)) else [cost]
    values = [e["flops"] for e in entries if isinstance(e, dict) and "flops" in e]
    return float(sum(values)) if values else None


def xla_unrolled(f, *args) -> float | None:
    """XLA's "flops" for ``f(*args)`` compiled with every scan written out (no loop left to count once)."""
    closed = jax.make_jaxpr(f)(*args)
    flat = jax.tree.leaves(args)
    unrolled = jax.jit(lambda *xs: _eval_unrolled(closed.jaxpr, closed.consts, xs))
    return xla_flops(unrolled.lower(*flat).compile())


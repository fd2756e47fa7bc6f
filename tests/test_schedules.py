"""Tests for cfl_jax.schedules: the values listed in docs/method.md §2, jit, optax composition."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cfl_jax


def values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_paper_form_values_factor_4():
  xi = cfl_jax.xi_schedule(100, cyclical_factor=4.0)
  # 1 - 4e/100 until e = 25, then (4e/100 - 1) / 3.
  np.testing.assert_allclose(
      values(xi, [0, 10, 24, 25, 26, 50, 75, 100]),
      [1.0, 0.6, 0.04, 0.0, 0.04 / 3, 1 / 3, 2 / 3, 1.0], atol=1e-6)


def test_paper_form_factor_1_is_a_monotone_fall_and_factor_2_a_triangle():
  fall = values(cfl_jax.xi_schedule(10, cyclical_factor=1.0), range(11))
  np.testing.assert_allclose(fall, np.linspace(1, 0, 11), atol=1e-6)
  triangle = values(cfl_jax.xi_schedule(10, cyclical_factor=2.0), range(11))
  np.testing.assert_allclose(triangle, [1, .8, .6, .4, .2, 0, .2, .4, .6, .8, 1], atol=1e-6)


def test_paper_form_holds_final_value_and_stays_in_unit_interval():
  for factor in (1.0, 1.5, 2.0, 3.0, 4.0, 7.3):
    for total in (1, 2, 7, 100, 201):
      xi = cfl_jax.xi_schedule(total, cyclical_factor=factor)
      got = values(xi, list(range(0, total + 5)) + [10 * total, -3])
      assert np.all((got >= 0) & (got <= 1)), (factor, total)
      assert got[-2] == got[total]  # held after total_steps
      assert got[0] == 1.0


def test_epoch_granular_paper_form():
  xi = cfl_jax.xi_schedule(40, cyclical_factor=2.0, steps_per_epoch=4)
  got = values(xi, range(41))
  # E = 10 epochs; xi is constant within each epoch and equals the per-epoch form.
  per_epoch = values(cfl_jax.xi_schedule(10, cyclical_factor=2.0), range(11))
  np.testing.assert_allclose(got, np.repeat(per_epoch, 4)[:41], atol=1e-6)


def test_reference_form_timm_values():
  xi = cfl_jax.reference_xi_schedule(201, 1, cyclical_factor=4.0)
  np.testing.assert_allclose(
      values(xi, [0, 25, 50, 51, 100, 150, 200]),
      [1.0, 0.5, 0.0, 0.00667, 0.3333, 0.6667, 1.0], atol=5e-5)


def test_reference_form_long_tail_values_overshoot_as_asked():
  xi = cfl_jax.reference_xi_schedule(30, 10, cyclical_factor=2.0, first_epoch=1)
  # step s is in epoch 1 + s // 10.
  np.testing.assert_allclose(values(xi, [0, 9, 140, 290, 299, 10_000]),
                             [0.931, 0.931, 0.0345, 1.069, 1.069, 1.069], atol=5e-4)


def test_reference_form_factor_1_branch():
  xi = cfl_jax.reference_xi_schedule(11, 1, cyclical_factor=1.0)
  got = values(xi, range(11))
  # f e < E for every epoch 0..10, so xi = 1 - e / 10 throughout: 1 -> 0 exactly.
  np.testing.assert_allclose(got, np.linspace(1, 0, 11), atol=1e-6)
  late = cfl_jax.reference_xi_schedule(11, 1, cyclical_factor=1.0, first_epoch=1)
  assert float(late(10)) == 0.0  # epoch 11 = E: the f == 1 branch


def test_cyclical_schedule_interpolates_min_at_ends_max_in_middle():
  wd = cfl_jax.cyclical_schedule(1e-4, 5e-4, 100, cyclical_factor=4.0)
  np.testing.assert_allclose(values(wd, [0, 25, 100]), [1e-4, 5e-4, 1e-4], rtol=1e-5)
  xi = cfl_jax.xi_schedule(100, cyclical_factor=4.0)
  steps = np.arange(0, 101, 7)
  np.testing.assert_allclose(values(wd, steps),
                             (1 - values(xi, steps)) * 5e-4 + values(xi, steps) * 1e-4,
                             rtol=1e-5)


@pytest.mark.parametrize("schedule", [
    cfl_jax.xi_schedule(50, cyclical_factor=4.0),
    cfl_jax.xi_schedule(50, cyclical_factor=2.0, steps_per_epoch=5),
    cfl_jax.reference_xi_schedule(10, 5, cyclical_factor=2.0, first_epoch=1),
    cfl_jax.cyclical_schedule(0.5, 2.0, 50),
])
def test_schedules_under_jit_match_eager(schedule):
  steps = jnp.arange(60)
  jitted = jax.jit(jax.vmap(schedule))(steps)
  assert jitted.dtype == jnp.float32
  np.testing.assert_allclose(jitted, values(schedule, range(60)), rtol=1e-6)


def test_inside_inject_hyperparams_and_join_schedules():
  xi = cfl_jax.xi_schedule(20, cyclical_factor=2.0)
  joined = optax.join_schedules([optax.constant_schedule(1.0), xi], boundaries=[5])
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=joined)
  params = {"w": jnp.ones(3)}
  state = opt.init(params)

  @jax.jit
  def step(state):
    _, state = opt.update({"w": jnp.ones(3)}, state, params)
    return state

  seen = []
  for _ in range(30):
    seen.append(float(state.hyperparams["learning_rate"]))
    state = step(state)
  # optax stores the value used by the latest update: joined(max(k - 1, 0)) after k updates.
  expected = [float(joined(max(k - 1, 0))) for k in range(30)]
  assert expected[:6] == [1.0] * 6 and expected[6] == pytest.approx(float(xi(0)))
  np.testing.assert_allclose(seen, expected, rtol=1e-6)
  np.testing.assert_allclose(seen[16], 0.0, atol=1e-7)  # xi's minimum at step 5 + 10


@pytest.mark.parametrize("call,match", [
    (lambda: cfl_jax.xi_schedule(0), "total_steps must be >= 1"),
    (lambda: cfl_jax.xi_schedule(10.5), "total_steps must be an integer"),
    (lambda: cfl_jax.xi_schedule(10, cyclical_factor=0.5), "cyclical_factor must be >= 1"),
    (lambda: cfl_jax.xi_schedule(10, steps_per_epoch=3), "multiple of steps_per_epoch"),
    (lambda: cfl_jax.xi_schedule(10, steps_per_epoch=0), "steps_per_epoch must be >= 1"),
    (lambda: cfl_jax.reference_xi_schedule(1, 5), "num_epochs must be >= 2"),
    (lambda: cfl_jax.reference_xi_schedule(10, 0), "steps_per_epoch must be >= 1"),
    (lambda: cfl_jax.reference_xi_schedule(10, 5, cyclical_factor=0.9),
     "cyclical_factor must be >= 1"),
    (lambda: cfl_jax.reference_xi_schedule(10, 5, first_epoch=2), "first_epoch must be 0 or 1"),
    (lambda: cfl_jax.cyclical_schedule(float("nan"), 1.0, 10), "min_value must be a finite"),
    (lambda: cfl_jax.cyclical_schedule(0.0, 1.0, 10, cyclical_factor=-1),
     "cyclical_factor must be >= 1"),
    (lambda: cfl_jax.follow_xi(cfl_jax.xi_schedule(10), 0.5, float("inf")),
     "max_value must be a finite"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()

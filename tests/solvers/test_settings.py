"""The ADMM's options as one frozen value (solvers/settings.py)."""

import dataclasses
import time

import numpy as np
import pytest

from solvers import PUBLISHED_OPTIONS, AdmmSettings, LayerProblem, solve_admm


def test_every_option_has_its_default_and_an_unknown_one_is_refused_by_name():
    settings = AdmmSettings.of({})
    assert (settings.max_iter, settings.rel_tol, settings.gap_tol, settings.relaxation) == (10_000, 1e-4, 5e-3, 1.6)
    assert AdmmSettings.of({"max_iter": 7}).max_iter == 7
    with pytest.raises(TypeError, match="'max_iters'"):
        AdmmSettings.of({"max_iters": 7})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_iter = 3


def test_the_published_configuration_is_the_published_options():
    published = AdmmSettings.published(max_iter=50)
    assert all(getattr(published, name) == value for name, value in PUBLISHED_OPTIONS.items())
    assert published.max_iter == 50 and AdmmSettings.published().max_iter == 10_000


@pytest.mark.parametrize(("changes", "message"), [
    ({"dtype": "float16"}, "dtype"), ({"relaxation": 2.0}, "relaxation"), ({"check_every": 0}, "check_every"),
    ({"stopping": "never"}, "stopping"), ({"rel_tol": -1.0}, "rel_tol"), ({"memory_limit": 0}, "memory_limit"),
    ({"memory_limit": True}, "memory_limit"), ({"time_limit": -1}, "time_limit")])
def test_a_bad_value_is_refused_by_name_also_when_replaced(changes, message):
    with pytest.raises(ValueError, match=message):
        AdmmSettings.of(changes)
    with pytest.raises(ValueError, match=message):
        AdmmSettings().replace(**changes)


def test_the_checks_that_need_the_program_name_the_option():
    problem = LayerProblem(np.ones((4, 9)), np.ones((2, 9)), np.ones(2))
    with pytest.raises(ValueError, match="initial"):
        AdmmSettings(initial=np.zeros((3, 2))).check_for(problem)
    with pytest.raises(ValueError, match="initial"):
        AdmmSettings(initial=np.full((4, 2), np.nan)).check_for(problem)
    with pytest.raises(ValueError, match="device"):
        AdmmSettings(device="tpu").check_for(problem)
    AdmmSettings(initial=np.zeros((4, 2))).check_for(problem)


def test_a_time_limit_becomes_a_callback_that_keeps_the_users():
    calls = []
    settings = AdmmSettings(time_limit=60, callback=lambda iteration, info: calls.append(iteration) or False)
    timed = settings.with_deadline()
    assert timed.time_limit is None and timed.callback(3, {}) is False and calls == [3]
    assert AdmmSettings().with_deadline().callback is None
    expired = AdmmSettings(time_limit=0).with_deadline()
    time.sleep(1e-3)
    assert expired.callback(1, {}) is True


def test_solve_admm_stops_at_a_time_limit_of_zero_at_its_first_check():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 200))
    Y = np.maximum(rng.standard_normal((30, 5)).T @ X, 0)
    result = solve_admm(LayerProblem(X, Y, 0.01 * np.linalg.norm(Y, axis=1)), time_limit=0)
    assert result.iterations <= 10 and result.status == "max_iter"

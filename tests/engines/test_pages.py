"""small_pages: numpy's huge-page advice is off inside a run and restored after it."""

import threading

import numpy as np
import pytest

import routing_sim as rs
import routing_sim.engines.fast.backward
from routing_sim.engines import pages
from routing_sim.engines.pages import huge_pages_advised, small_pages

pytestmark = pytest.mark.skipif(huge_pages_advised() is None,
                                reason="this numpy has no runtime switch for the advice")


@pytest.fixture(autouse=True)
def advised(monkeypatch):
    """Start every test with the advice on and no user setting; put numpy back after."""
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    assert pages._PAGES.switch is not None
    before = pages._PAGES.switch(True)
    yield
    pages._PAGES.switch(before)


def test_off_inside_and_restored_after():
    with small_pages():
        assert huge_pages_advised() is False
    assert huge_pages_advised() is True


def test_a_user_setting_off_stays_off():
    assert pages._PAGES.switch is not None
    pages._PAGES.switch(False)
    with small_pages():
        assert huge_pages_advised() is False
    assert huge_pages_advised() is False


def test_restored_when_the_block_raises():
    with pytest.raises(RuntimeError, match="inside"):
        with small_pages():
            raise RuntimeError("inside")
    assert huge_pages_advised() is True


def test_concurrent_blocks_restore_only_when_the_last_ends():
    inside, release = threading.Barrier(2), threading.Event()
    seen = []

    def worker():
        with small_pages():
            inside.wait()
            release.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    with small_pages():
        inside.wait()
    seen.append(huge_pages_advised())               # the worker is still inside
    release.set()
    thread.join()
    seen.append(huge_pages_advised())
    assert seen == [False, True]


def test_the_environment_variable_is_the_users_choice(monkeypatch):
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    with small_pages():
        assert huge_pages_advised() is True


def test_simulate_and_backward_run_with_small_pages(monkeypatch):
    seen = {}

    def watching(score, b, h, q_idx, kv_idx):       # called while simulate runs
        seen["simulate"] = huge_pages_advised()
        return score

    real = routing_sim.engines.fast.backward.backward

    def backward(*args, **kwargs):
        seen["backward"] = huge_pages_advised()
        return real(*args, **kwargs)

    monkeypatch.setattr(routing_sim.engines.fast.backward, "backward", backward)
    q, k, v = np.random.default_rng(0).normal(size=(3, 4, 2))
    run = rs.simulate(q, k, v, score_mod=watching)
    with pytest.raises(rs.InvalidArgumentError):    # a plain score_mod has no derivative
        run.backward(np.ones((4, 2)))
    assert seen == {"simulate": False, "backward": False}
    assert huge_pages_advised() is True

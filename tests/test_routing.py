"""Pure fleet decisions: which queues a worker listens on, and the fleet's health."""

from __future__ import annotations

from common.fleet import PROVISIONING, READY, ModelFit, WorkerRecord, capacity, fleet_status, why_unserved
from worker.routing import Waiting, choose_switch, listen_order

A, B = "model/a", "model/b"


def worker(name: str, *, loaded: tuple[str, ...] = (), fits: tuple[str, ...] = (A, B), state: str = READY,
           slots: int = 1) -> WorkerRecord:  # fmt: skip
    models = {m: ModelFit(tag=m, installed=True, fits=m in fits, loaded=m in loaded, need_bytes=10) for m in (A, B)}
    return WorkerRecord(name, "h", 1, "v", "http://o", state=state, slots=slots, models=models, vram_budget=8)


def test_warm_models_come_first_and_cold_ones_only_if_no_one_has_them_warm() -> None:
    me = worker("me", loaded=(B,))
    assert listen_order(me, [], {}) == [B, A]
    assert listen_order(me, [worker("other", loaded=(A,))], {}) == [B]


def test_waiting_jobs_pull_in_cold_workers() -> None:
    me = worker("me", loaded=(B,))
    assert listen_order(me, [worker("other", loaded=(A,))], {A: 2}) == [B, A]


def test_a_warm_model_elsewhere_on_a_worker_not_ready_does_not_count() -> None:
    me = worker("me")
    assert listen_order(me, [worker("other", loaded=(A,), state=PROVISIONING)], {}) == [A, B]


def test_models_that_do_not_fit_are_never_listened_to() -> None:
    assert listen_order(worker("me", fits=(A,), loaded=(B,)), [], {}) == [A]


def test_capacity_sums_the_slots_of_workers_that_serve_the_model() -> None:
    fleet = [worker("x", slots=4), worker("y", slots=2, fits=(A,)), worker("z", slots=8, state=PROVISIONING)]
    assert (capacity(fleet, A), capacity(fleet, B)) == (6, 4)


def test_fleet_status() -> None:
    assert fleet_status([], [A]) == "LOADING"
    assert fleet_status([worker("x", state=PROVISIONING)], [A]) == "LOADING"
    assert fleet_status([worker("x")], [A, B]) == "OK"
    assert fleet_status([worker("x", fits=(A,))], [A, B]) == "OK"  # B fits nowhere: refused, not waited for
    not_installed = worker("y")
    not_installed.models[B].installed = False
    assert fleet_status([not_installed], [A, B]) == "LOADING"


def test_why_unserved_names_the_vram_shortfall() -> None:
    too_small = worker("x", fits=(A,))
    too_small.models[B].need_bytes = 20 * 2**30
    too_small.vram_budget = 7 * 2**30
    assert why_unserved([too_small], B) == (
        "model 'model/b' needs about 20.0 GiB of VRAM; the largest GPU in this runner's fleet offers 7.0 GiB"
    )
    assert "no worker is running" in why_unserved([], B)


def test_an_idle_model_gives_the_gpu_to_waiting_jobs_at_once() -> None:
    switch = choose_switch(A, held_s=0.1, running=0, queues={A: Waiting(), B: Waiting(1, 0.2)},
                           switch_cost_s={}, warm_elsewhere=set(), hold_s=5.0)  # fmt: skip
    assert switch is not None and switch.model == B and "idle" in switch.reason


def test_a_busy_model_is_held_until_the_other_has_waited_a_switch_and_it_had_as_long() -> None:
    busy = {A: Waiting(3, 1.0), B: Waiting(2, 4.0)}
    cost = {B: 8.0}
    assert choose_switch(A, 20.0, 1, busy, cost, set(), hold_s=5.0) is None  # B waited 4 s < its 8 s switch
    assert choose_switch(A, 6.0, 1, {**busy, B: Waiting(2, 9.0)}, cost, set(), hold_s=5.0) is None  # A had 6 s
    switch = choose_switch(A, 9.0, 1, {**busy, B: Waiting(2, 9.0)}, cost, set(), hold_s=5.0)
    assert switch is not None and switch.model == B and "waited 9.0 s" in switch.reason


def test_a_model_warm_on_another_gpu_is_left_to_it_unless_its_jobs_wait_twice_as_long() -> None:
    queues = {A: Waiting(), B: Waiting(1, 6.0)}
    assert choose_switch(A, 30.0, 0, queues, {}, {B}, hold_s=5.0) is None
    assert choose_switch(A, 30.0, 0, {A: Waiting(), B: Waiting(1, 10.0)}, {}, {B}, hold_s=5.0) is not None


def test_the_longest_waiting_model_wins_and_nothing_waiting_means_no_switch() -> None:
    c = "model/c"
    queues = {A: Waiting(1, 1.0), B: Waiting(1, 7.0), c: Waiting(4, 12.0)}
    switch = choose_switch(A, 10.0, 1, queues, {}, set(), hold_s=5.0)
    assert switch is not None and switch.model == c
    assert choose_switch(A, 100.0, 1, {A: Waiting(5, 50.0), B: Waiting()}, {}, set(), hold_s=5.0) is None
    first = choose_switch(None, 0.0, 0, {A: Waiting(), B: Waiting(1, 0.0)}, {}, set(), hold_s=5.0)
    assert first is not None and first.model == B and first.reason == "nothing loaded"

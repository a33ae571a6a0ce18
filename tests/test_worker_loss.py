"""What the coordinator moves when a Dask worker is lost, without a cluster: which arrivals
count as started (a `_started` notice received), which move, and how they split over the
survivors. The real loss (a SIGKILLed worker process) is in test_dask.py."""

from __future__ import annotations

from types import SimpleNamespace

from workbench.driver import shard
from workbench.driver.cluster import Coordinator, _Worker
from workbench.driver.config import RunConfig


def coordinator(workers: int, now: float = 0.0, **params) -> Coordinator:
    config = RunConfig.from_params(profile="fast", workers=workers, **params)
    c = Coordinator(config, lambda line: None)
    c.workers = [_Worker(i, f"tcp://127.0.0.1:{9000 + i}") for i in range(workers)]
    live = SimpleNamespace(flow_started=lambda flow_id: None)
    clock = SimpleNamespace(now=lambda: now)
    c.runner = SimpleNamespace(clock=clock, t_start=0.0, live=live)  # type: ignore[assignment]
    return c


def notice(c: Coordinator, worker: int, launch: int, user: int, flow_id: int) -> None:
    c._record(
        c.workers[worker],
        {"kind": "_started", "flow_id": flow_id, "launch": launch, "user": user,
         "address": "0x0", "t": 0.0},
    )  # fmt: skip


def test_only_arrivals_without_a_notice_move_and_keep_their_planned_times():
    c = coordinator(2, now=2.5, users=10, shape="staggered", ramp_s=10)
    for user in (1, 3):  # users 1 and 3 started on worker 1 (launch i is user i here)
        notice(c, 1, user, user, flow_id=user)
    lost = c.workers[1]
    lost.gone.set()
    moving = c._unstarted(lost)
    assert [a.user for a in moving] == [5, 7, 9]
    assert [a.at_s for a in moving] == [5.0, 7.0, 9.0]  # the shape's times, not "now"
    plan = c._split(lost, moving, busy={1, 3}, to=[c.workers[0]])
    assert [(s.index, [a.index for a in m.arrivals], m.wallets) for s, m in plan] == [
        (0, [5, 7, 9], ())  # closed model: each user's wallet goes with its arrival
    ]
    assert c._unstarted(lost) == []  # moved: now worker 0's, never moved twice from here


def test_a_started_repeating_user_moves_only_while_its_deadline_is_ahead():
    before = coordinator(2, now=3.0, users=4, shape="hold", ramp_s=1, duration_s=8)
    after = coordinator(2, now=8.5, users=4, shape="hold", ramp_s=1, duration_s=8)
    for c in (before, after):
        notice(c, 1, 1, 1, flow_id=1)
        notice(c, 1, 3, 3, flow_id=3)
    assert [a.user for a in before._unstarted(before.workers[1])] == [1, 3]
    assert after._unstarted(after.workers[1]) == []


def test_open_model_arrivals_split_over_survivors_with_the_lost_workers_idle_wallets():
    c = coordinator(3, now=0.5, users=9, shape="poisson", rate_per_s=20, duration_s=2)
    lost = c.workers[1]
    mine = [i for i, la in enumerate(c.shape.launches()) if shard.launch_owner(i, la, 3) == 1]
    notice(c, 1, mine[0], user=4, flow_id=1)  # wallet 4 is in flight there
    lost.gone.set()
    moving = c._unstarted(lost)
    assert [a.index for a in moving] == mine[1:]
    assert all(a.user is None for a in moving)
    plan = c._split(lost, moving, busy={4}, to=[c.workers[0], c.workers[2]])
    assert [s.index for s, _ in plan] == [0, 2]
    moved = sorted(a.index for _, m in plan for a in m.arrivals)
    assert moved == mine[1:]  # every one once, over both survivors
    assert abs(len(plan[0][1].arrivals) - len(plan[1][1].arrivals)) <= 1
    wallets = sorted(w for _, m in plan for w in m.wallets)
    assert wallets == [1, 7]  # worker 1's pool (1, 4, 7) without the one in flight
    # Worker 2 lost next: it hands on what it got from worker 1 too.
    c.workers[2].gone.set()
    again = c._unstarted(c.workers[2])
    assert {a.index for a in plan[1][1].arrivals} <= {a.index for a in again}
    plan2 = c._split(c.workers[2], again, busy=set(), to=[c.workers[0]])
    assert set(plan[1][1].wallets) <= set(plan2[0][1].wallets)


def test_the_loss_line_says_where_arrivals_went_or_that_none_could_go():
    from workbench.driver.cluster import _lost_line

    assert _lost_line(1, 3, 12, [0, 2], 12).endswith("12 arrivals moved to workers 0, 2")
    alone = _lost_line(1, 3, 12, [], 0)
    assert "12 arrivals not started had no worker to go to: not run" in alone

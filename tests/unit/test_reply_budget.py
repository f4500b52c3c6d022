"""ReplyBudget: replies admitted within the byte budget, first come first served, nothing lost to cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fedagg.server.reply_budget import ReplyBudget


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


async def settled() -> None:
    """Let every ready callback and task step run (admissions are callbacks on the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_replies_within_the_budget_are_admitted_at_once_and_the_rest_wait_in_order() -> None:
    async def scenario() -> None:
        budget = ReplyBudget(100)
        await budget.acquire(60)
        await budget.acquire(40)
        admitted: list[str] = []

        async def wait(name: str, size: int) -> None:
            await budget.acquire(size)
            admitted.append(name)

        first = asyncio.create_task(wait("first", 50))
        await settled()
        second = asyncio.create_task(wait("second", 10))  # would fit after 40 goes, but queues behind first
        await settled()
        assert admitted == []
        assert budget.in_flight == 100
        budget.release(40)
        await settled()
        assert admitted == []  # first (50) does not fit beside 60; second may not overtake it
        budget.release(60)
        await asyncio.gather(first, second)
        assert admitted == ["first", "second"]
        assert budget.in_flight == 60

    run(scenario)


def test_a_reply_larger_than_the_budget_goes_alone() -> None:
    async def scenario() -> None:
        budget = ReplyBudget(10)
        await budget.acquire(25)  # nothing in flight: admitted
        assert budget.in_flight == 25
        waiter = asyncio.create_task(budget.acquire(1))
        await settled()
        assert not waiter.done()
        budget.release(25)
        await waiter
        assert budget.in_flight == 1

    run(scenario)


def test_a_waiter_cancelled_in_line_lets_the_next_one_in() -> None:
    async def scenario() -> None:
        budget = ReplyBudget(10)
        await budget.acquire(8)
        big = asyncio.create_task(budget.acquire(9))
        await settled()
        small = asyncio.create_task(budget.acquire(2))
        await settled()
        assert not small.done()  # behind big
        big.cancel()
        await small
        assert budget.in_flight == 10

    run(scenario)


def test_a_waiter_cancelled_after_admission_gives_its_bytes_back() -> None:
    async def scenario() -> None:
        budget = ReplyBudget(10)
        await budget.acquire(10)
        waiter = asyncio.create_task(budget.acquire(5))
        await settled()
        budget.release(10)  # admits the waiter (5 in flight) before it runs
        assert budget.in_flight == 5
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()
        assert budget.in_flight == 0

    run(scenario)


def test_a_cancelled_waiter_admitted_by_nobody_is_skipped_when_others_release() -> None:
    async def scenario() -> None:
        budget = ReplyBudget(10)
        await budget.acquire(10)
        gone = asyncio.create_task(budget.acquire(4))
        await settled()
        kept = asyncio.create_task(budget.acquire(4))
        await settled()
        gone.cancel()
        budget.release(10)  # before the cancelled task has run its cleanup
        await asyncio.gather(gone, return_exceptions=True)
        await kept
        assert budget.in_flight == 4

    run(scenario)


def test_zero_means_unbounded() -> None:
    async def scenario() -> None:
        budget = ReplyBudget(0)
        for _ in range(4):
            await budget.acquire(1 << 30)
        assert budget.in_flight == 4 << 30

    run(scenario)


def test_the_listener_hears_every_change_of_bytes_and_queue() -> None:
    async def scenario() -> None:
        reports: list[tuple[int, int]] = []
        budget = ReplyBudget(10, lambda size, waiting: reports.append((size, waiting)))
        await budget.acquire(6)
        waiter = asyncio.create_task(budget.acquire(6))
        await settled()
        budget.release(6)
        await waiter
        budget.release(6)
        assert reports == [(6, 0), (6, 1), (6, 0), (0, 0)]

    run(scenario)

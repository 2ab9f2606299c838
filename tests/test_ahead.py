"""The background iterator: the items in order, errors where their item was due, a thread that stops."""

from __future__ import annotations

import threading

import pytest

from embdim.ahead import Ahead


def test_items_arrive_in_order_and_all_of_them() -> None:
    with Ahead(iter(range(1000)), depth=3) as items:
        assert list(items) == list(range(1000))


def test_the_items_are_made_in_the_background_thread() -> None:
    def made_where():
        while True:
            yield threading.current_thread().name

    with Ahead(made_where(), depth=1, name="maker") as names:
        assert next(iter(names)) == "maker"


def test_an_error_is_raised_where_its_item_was_due() -> None:
    def failing():
        yield 1
        raise KeyError("the second item")

    with Ahead(failing(), depth=2) as items:
        it = iter(items)
        assert next(it) == 1
        with pytest.raises(KeyError, match="the second item"):
            next(it)


def test_leaving_the_block_early_stops_the_thread() -> None:
    with Ahead(iter(range(10**9)), depth=1) as items:
        next(iter(items))
        thread = items._thread
        assert thread.is_alive()
    assert not thread.is_alive()


def test_a_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        Ahead(iter(()), depth=0)

"""The agents' pace by region size."""

from __future__ import annotations

import pytest

from controller.services.pace import REPORT_FLOOR_S, RegionPace


def _pace(nodes: int, rate: float = 50.0, down_after_s: float = 30.0) -> RegionPace:
    pace = RegionPace(rate, down_after_s)
    pace._nodes = nodes
    return pace


@pytest.mark.parametrize("nodes, interval", [(0, REPORT_FLOOR_S), (250, REPORT_FLOOR_S),
                                             (1000, 20.0), (10_000, 200.0)])
def test_reports_of_the_whole_region_stay_under_the_rate(nodes: int, interval: float) -> None:
    assert _pace(nodes).report_interval_s == interval


def test_a_long_poll_never_waits_so_long_that_its_node_looks_down() -> None:
    pace = _pace(10, down_after_s=30.0)
    assert pace.poll_wait_s == 25.0  # the agent's default, 5 s to spare
    assert pace.capped_wait(60.0) == 25.0
    assert pace.capped_wait(5.0) == 5.0
    assert _pace(10, down_after_s=6.0).poll_wait_s == 3.0  # half, when 5 s is most
    # a large region trades a longer down delay for fewer renewals: 10,000 nodes, 100 a second
    assert _pace(10_000, down_after_s=105.0).poll_wait_s == 100.0


@pytest.mark.parametrize("rate, down", [(0.0, 30.0), (50.0, 0.0), (-1.0, 30.0)])
def test_a_pace_that_cannot_hold_is_refused(rate: float, down: float) -> None:
    with pytest.raises(ValueError):
        RegionPace(rate, down)

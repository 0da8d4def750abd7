"""The warm pool's depth follows recent demand (core/demand.py, pure)."""
from netagent.core.demand import Demand


def test_an_idle_host_keeps_the_configured_size():
    assert Demand().target(100.0, size=16, max_size=256, window_s=60) == 16


def test_each_recent_allocation_adds_one_slot_up_to_the_bound():
    d = Demand()
    for k in range(50):
        d.record(10.0 + k * 0.01)
    assert d.target(11.0, size=16, max_size=256, window_s=60) == 66
    assert d.target(11.0, size=16, max_size=40, window_s=60) == 40


def test_demand_older_than_the_window_no_longer_counts():
    d = Demand()
    for t in (0.0, 1.0, 59.0):
        d.record(t)
    assert d.recent(59.5, window_s=60) == 3
    assert d.recent(60.5, window_s=60) == 2    # the allocation at 0.0 aged out
    assert d.target(200.0, size=4, max_size=100, window_s=60) == 4


def test_a_bound_at_or_below_size_is_a_fixed_pool():
    d = Demand()
    for t in range(30):
        d.record(float(t))
    assert d.target(30.0, size=16, max_size=0, window_s=60) == 16
    assert d.target(30.0, size=16, max_size=16, window_s=60) == 16

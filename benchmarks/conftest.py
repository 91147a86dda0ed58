import pytest

import fastnn


@pytest.fixture(autouse=True)
def one_thread():
    """Single-thread figures are primary (DESIGN.md section 6)."""
    from threadpoolctl import threadpool_limits

    before = fastnn.get_num_threads()
    fastnn.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        yield
    fastnn.set_num_threads(before)

import os

import fastnn
import pytest

# hypothesis: no deadline (shared, noisy machines), no example database in the repo
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("fastnn", deadline=None, database=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture])
    settings.load_profile("fastnn")
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass


@pytest.fixture(params=fastnn.available_archs())
def each_arch(request):
    """Run a test once per compiled kernel table this CPU supports."""
    before = fastnn.arch()
    fastnn.set_arch(request.param)
    yield request.param
    fastnn.set_arch(before)


@pytest.fixture
def threads():
    """Set the thread count inside a test; restored afterwards."""
    before = fastnn.get_num_threads()
    yield fastnn.set_num_threads
    fastnn.set_num_threads(before)


def pytest_report_header(config):
    return (f"fastnn {fastnn.__version__}: arch={fastnn.arch()} available={fastnn.available_archs()} "
            f"openmp={fastnn.openmp_enabled()} threads={fastnn.get_num_threads()} "
            f"FASTNN_ARCH={os.environ.get('FASTNN_ARCH', '')!r}")


@pytest.fixture
def per_op(monkeypatch):
    """A function that makes fit and predict take the per-op path (no layer plan, no fused
    inference net) for the rest of the test."""
    from fastnn import _fused

    def force():
        monkeypatch.setattr(_fused, "training_plan", lambda *a, **k: None)
        monkeypatch.setattr(_fused, "inference_net", lambda *a, **k: None)
    return force

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: keep each test on one core and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)

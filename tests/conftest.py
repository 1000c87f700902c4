import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where a CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs per test, yet reproducible from the test id."""
    torch.manual_seed(abs(hash(request.node.nodeid)) % (2**31))

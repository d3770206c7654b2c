import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs per test, reproducible from the test's name."""
    torch.manual_seed(abs(hash(request.node.nodeid)) % (2**31))

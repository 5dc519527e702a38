"""Fixtures of the parity tests."""
import os

import pytest


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """The synthetic dataset in a cache of the test's own (the user's stays clean)."""
    path = tmp_path_factory.mktemp('cache')
    old = os.environ.get('MMDET_FOCAL_TRITON_CACHE')
    os.environ['MMDET_FOCAL_TRITON_CACHE'] = str(path)
    yield path
    if old is None:
        os.environ.pop('MMDET_FOCAL_TRITON_CACHE')
    else:
        os.environ['MMDET_FOCAL_TRITON_CACHE'] = old

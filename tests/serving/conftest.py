"""Fixtures shared by the serving tests."""

import pytest

from vidpress.testing import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """family -> the folder of a tiny random-weight model of that family, saved once per test module."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_tiny_model(family, tmp_path_factory.mktemp(family))
        return cache[family]

    return get

"""Shared fixtures: tiny offline Video LLMs built once per test session."""

import pytest

import vidpress  # noqa: F401  (makes torchvision importable before any processor import)
from vidpress.testing import load_tiny


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """Session-wide cache directory that the tiny models are built into."""
    return tmp_path_factory.mktemp("vidpress_tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_cache):
    """Factory `tiny_model(family, attn="eager") -> (model, processor)`, cached per (family, attn).

    The same model object is handed to every test that asks for it: tests that patch or hook it must undo that.
    """
    loaded = {}

    def get(family: str, attn: str = "eager"):
        if (family, attn) not in loaded:
            loaded[family, attn] = load_tiny(family, attn_implementation=attn, cache_dir=tiny_cache)
        return loaded[family, attn]

    return get

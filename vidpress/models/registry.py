"""The adapter registry: `@register_adapter` on each family's class fills `ADAPTERS`; `get_adapter(model)` picks
the adapter of a model by its `config.model_type`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidpress.models.base import Adapter

#: The registered adapters, in registration order: `@register_adapter` on each family's class fills it.
ADAPTERS: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter serve the models whose `config.model_type` is in its `model_types`.

    A new model family is one file in vidpress/models/ with `@register_adapter` on its class, plus one import line
    in `models/__init__.py`.
    """
    taken = [t for a in ADAPTERS for t in a.model_types if t in cls.model_types and a is not cls]
    if not cls.model_types or taken:
        raise ValueError(f"{cls.__name__}: model_types must be non-empty and not served by another adapter; got "
                         f"{cls.model_types!r} ({', '.join(taken) or 'none'} already registered)")
    if cls not in ADAPTERS:
        ADAPTERS.append(cls)
    return cls


def describe_families(adapters: list[type[Adapter]] | None = None) -> str:
    """"family (model_type/...)" for each adapter (default: every registered one), for error messages."""
    return ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in (ADAPTERS if adapters is None else adapters))


def adapter_class(model_type: str | None) -> type[Adapter] | None:
    """The adapter class of the family `model_type` (a config's model_type) belongs to; None when unsupported."""
    return next((adapter for adapter in ADAPTERS if model_type in adapter.model_types), None)


def get_adapter(model) -> Adapter:
    """The adapter for `model`'s family; a clear error for anything else."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = adapter_class(model_type)
    if adapter is None:
        raise ValueError(f"unsupported model type {model_type!r} ({type(model).__name__}); supported families: "
                         f"{describe_families()}")
    if not hasattr(model, "model") or not hasattr(model, "generate"):
        raise ValueError(f"pass the *ForConditionalGeneration model of {adapter.family} (got {type(model).__name__})")
    return adapter(model)

"""Model instances for the hot paths, built without ``Model.__init__``.

``Model.__init__`` walks every field, looks each one up among its keywords and sends
pre_init and post_init: most of what the few instances of every allowance and commit
cost (about 50 us for a hold, as much for a usage event). These build the same instance
the way unpickling does. Nothing listens to those signals for the hot paths' models;
when something does, the instance is built by ``__init__`` after all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, models
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init

M = TypeVar("M", bound=models.Model)


def _signalled(model: type[models.Model]) -> bool:
    # With nothing connected at all (as here), has_listeners' lookup of the sender is skipped.
    return bool(pre_init.receivers or post_init.receivers) and (
        pre_init.has_listeners(model) or post_init.has_listeners(model)
    )


def instance_new(model_class: type[M], /, **values: Any) -> M:
    """Return the unsaved instance ``model_class(**values)`` would return (values by attname, or a related object by name)."""
    if _signalled(model_class):
        return model_class(**values)
    instance = model_class.__new__(model_class)
    instance._state = ModelState()
    fields = instance.__dict__
    for attname, name, default in _fields(model_class):
        if attname in values:
            fields[attname] = values.pop(attname)
        elif name in values:
            setattr(instance, name, values.pop(name))  # the descriptor sets the id and keeps the object
        else:
            fields[attname] = default()
    if values:
        raise TypeError(f"{model_class.__name__} got unexpected keyword arguments: {', '.join(values)}")
    return instance


def instance_from_row(model: type[M], values: Sequence[Any]) -> M:
    """Return the saved instance of ``model`` whose columns, in field order, are ``values``: what ``Model.from_db`` returns."""
    if _signalled(model):
        return model.from_db(DEFAULT_DB_ALIAS, attnames(model), values)
    instance = model.__new__(model)
    instance.__dict__.update(zip(attnames(model), values, strict=True))
    state = instance._state = ModelState()
    state.adding, state.db = False, DEFAULT_DB_ALIAS  # the hot cursor's connection (a lookup of ``connection`` costs)
    return instance


@cache
def attnames(model: type[models.Model]) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)


@cache
def _fields(model: type[models.Model]) -> tuple[tuple[str, str, Callable[[], Any]], ...]:
    """Each concrete field's attname, name (a relation's differs) and default, in field order."""
    return tuple((f.attname, f.name, f.get_default) for f in model._meta.concrete_fields)

"""The errors ``google.appengine.ext.db`` adds to the datastore's own."""

from __future__ import annotations

from kiln.api import datastore_errors


class KindError(datastore_errors.BadValueError):
    """A model class does not match the kind of an entity or key it was given."""


class PropertyError(datastore_errors.Error):
    """A property name is not valid for the query or model it is used with."""


class DuplicatePropertyError(datastore_errors.Error):
    """Two properties of a model would have the same name."""


class ConfigurationError(datastore_errors.Error):
    """A property or model is declared with options that do not go together."""


class ReservedWordError(datastore_errors.Error):
    """A property is declared under a name the model class itself uses."""


class DerivedPropertyError(datastore_errors.Error):
    """A value was assigned to a property that is computed."""


class NotSavedError(datastore_errors.Error):
    """The model instance has no complete key yet: put it first (or give it a key name)."""

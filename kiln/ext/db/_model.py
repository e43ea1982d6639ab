"""Models: classes whose instances are datastore entities.

``class Greeting(db.Model)`` with property declarations defines the kind
``Greeting``; the metaclass collects the properties and records the class in
a kind registry, so that query results and ``db.get`` come back as instances
of the class registered for each entity's kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from kiln import gql
from kiln.api import datastore
from kiln.api.datastore_errors import (
    BadArgumentError, BadKeyError, BadRequestError, BadValueError, ReferencePropertyResolveError,
)
from kiln.api.datastore_types import Key, to_value
from kiln.ext.db._errors import DuplicatePropertyError, KindError, NotSavedError, ReservedWordError
from kiln.ext.db._properties import AUTO_UPDATE_UNCHANGED, ListProperty, Property

if TYPE_CHECKING:
    from kiln.ext.db._query import GqlQuery, Query

M = TypeVar("M", bound="Model")

# Names a property cannot take: they would hide a Model attribute (checked against dir(Model) too).
_RESERVED_WORDS = frozenset({"key_name"})
_kind_map: dict[str, type[Model]] = {}
_model_defined = False


def class_for_kind(kind: str) -> type[Model]:
    """The model class registered for ``kind``.

    Raises:
        KindError: no model class of that kind has been defined.
    """
    try:
        return _kind_map[kind]
    except KeyError:
        raise KindError(f"No implementation for kind '{kind}'") from None


def _check_reserved_word(attr_name: str) -> None:
    if attr_name.startswith("__") and attr_name.endswith("__"):
        raise ReservedWordError(
            f"Cannot define property {attr_name!r}: names beginning and ending with '__' are reserved")
    if attr_name in _RESERVED_WORDS or (_model_defined and attr_name in dir(Model)):
        raise ReservedWordError(
            f"Cannot define property using reserved word '{attr_name}'. If you would like to use this "
            f"name in the datastore consider using a different name like {attr_name}_ and adding "
            f"name='{attr_name}' to the parameter list of the property definition.")


class PropertiedClass(type):
    """Metaclass of models: collects ``Property`` declarations and registers the kind."""

    _properties: dict[str, Property]
    _all_properties: frozenset[str]
    _unindexed_properties: frozenset[str]

    def __init__(cls, name: str, bases: tuple[type, ...], dct: dict[str, Any]) -> None:
        super().__init__(name, bases, dct)
        properties: dict[str, Property] = {}
        for base in reversed(bases):
            properties.update(getattr(base, "_properties", {}))
        for attr_name, attr in dct.items():
            if isinstance(attr, Property):
                _check_reserved_word(attr_name)
                properties[attr_name] = attr
                attr.__property_config__(cls, attr_name)  # type: ignore[arg-type]
        by_name: dict[str, str] = {}
        for attr_name, prop in properties.items():
            assert prop.name is not None  # set by __property_config__
            if prop.name in by_name and properties[by_name[prop.name]] is not prop:
                raise DuplicatePropertyError(f"Duplicate property: {prop.name}")
            by_name[prop.name] = attr_name
        cls._properties = properties
        cls._all_properties = frozenset(by_name)
        cls._unindexed_properties = frozenset(p.name for p in properties.values() if not p.indexed and p.name)
        if _model_defined:  # every class after Model itself is a Model subclass
            model_class = cast("type[Model]", cls)
            _kind_map[model_class.kind()] = model_class


def _parent_key(parent: Any) -> Key | None:
    if parent is None:
        return None
    if isinstance(parent, Model):
        if not parent.has_key():
            raise BadValueError(
                f"{parent.kind()} instance must have a complete key before it can be used as a parent.")
        return parent.key()
    if isinstance(parent, str):
        parent = Key(parent)
    if not isinstance(parent, Key):
        raise BadArgumentError(f"parent must be a Model instance or a Key, got {type(parent).__name__}")
    if not parent.has_id_or_name():
        raise BadValueError("parent key must be complete")
    return parent


def _quote_kind(kind: str) -> str:
    """The kind as GQL text (double-quoted when it is not a plain identifier)."""
    if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", kind) and kind.upper() not in gql.RESERVED:
        return kind
    return '"' + kind.replace('"', '""') + '"'


class Model(metaclass=PropertiedClass):
    """A datastore entity as a Python object; subclass it and declare properties.

    ``Model(parent=None, key_name=None, **values)``: ``parent`` (a model
    instance or key) puts the entity in the parent's entity group;
    ``key_name`` (or ``id``) gives it a key of its own choosing instead of an
    allocated id; ``key`` gives the complete key directly. Property values
    not given start at their defaults.
    """

    # Set on each class by PropertiedClass; declared here so instances see it too.
    _properties: ClassVar[dict[str, Property]]

    def __init__(self, parent: Model | Key | str | None = None, key_name: str | None = None,
                 _app: str | None = None, _from_entity: bool = False, **kwds: Any) -> None:
        self._kiln_prepare()
        key = kwds.pop("key", None)
        ident = kwds.pop("id", None)
        self._kiln_setup_key(parent, key_name, ident, key, _app)
        for attr_name, prop in self._properties.items():
            value = kwds[attr_name] if attr_name in kwds else prop.default_value()
            prop.__set__(self, value)

    def _kiln_prepare(self) -> None:
        self._kiln_key: Key | None = None
        self._kiln_parent_key: Key | None = None
        self._kiln_saved = False
        self._kiln_projection: tuple[str, ...] | None = None

    def _kiln_setup_key(self, parent: Any, key_name: Any, ident: Any, key: Any, app: str | None) -> None:
        if key is not None:
            if parent is not None or key_name is not None or ident is not None:
                raise BadArgumentError("Cannot use key together with parent, key_name or id")
            if isinstance(key, str):
                key = Key(key)
            if not isinstance(key, Key):
                raise BadArgumentError(f"Expected Key type; received {type(key).__name__}")
            if not key.has_id_or_name():
                raise BadKeyError("Key must have an id or name")
            if key.kind() != self.kind():
                raise BadArgumentError(f"Expected Key kind to be {self.kind()}; received {key.kind()}")
            self._kiln_key = key
            return
        parent_key = _parent_key(parent)
        if key_name is not None and ident is not None:
            raise BadArgumentError("Cannot use both key_name and id")
        if key_name is not None:
            if not isinstance(key_name, str):
                raise BadValueError(f"Name must be string type, not {type(key_name).__name__}")
            if not key_name:
                raise BadValueError("Name cannot be empty")
            if key_name.startswith("__") and key_name.endswith("__"):
                raise BadValueError(f"Name {key_name!r} is reserved (names like __*__ are)")
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, int) or ident <= 0):
            raise BadValueError(f"id must be a positive integer, got {ident!r}")
        self._kiln_parent_key = parent_key
        name_or_id = key_name if key_name is not None else ident
        if name_or_id is not None:
            self._kiln_key = Key.from_path(self.kind(), name_or_id, parent=parent_key, _app=app)

    # -- identity --

    @classmethod
    def kind(cls) -> str:
        """The datastore kind of this model: the class name unless overridden."""
        return cls.__name__

    def key(self) -> Key:
        """The instance's key.

        Raises:
            NotSavedError: the instance was never put and has no key name or id.
        """
        if self._kiln_key is None:
            raise NotSavedError("Instance has no key: it was not saved and has no key_name or id")
        return self._kiln_key

    def has_key(self) -> bool:
        """True once the instance has a complete key (a key name or id, or after put)."""
        return self._kiln_key is not None

    def is_saved(self) -> bool:
        """True once the instance was put, or when it was loaded from the datastore."""
        return self._kiln_saved

    def parent_key(self) -> Key | None:
        """The key of the parent entity, or ``None`` for a root entity."""
        if self._kiln_key is not None:
            return self._kiln_key.parent()
        return self._kiln_parent_key

    def parent(self) -> Model | None:
        """The parent entity (fetched from the datastore), or ``None``."""
        key = self.parent_key()
        return None if key is None else get(key)

    @classmethod
    def properties(cls) -> dict[str, Property]:
        """The declared properties, by attribute name."""
        return dict(cls._properties)

    fields = properties

    def dynamic_properties(self) -> list[str]:
        """Names of the dynamic properties (only an ``Expando`` has any)."""
        return []

    # -- conversion --

    def _kiln_values(self, *, update: bool) -> tuple[dict[str, Any], set[str]]:
        """Datastore values by property name, and the unindexed names; ``update`` applies auto_now…."""
        values: dict[str, Any] = {}
        unindexed: set[str] = set()
        for prop in self._properties.values():
            if update:
                new = prop.get_updated_value_for_datastore(self)
                if new is not AUTO_UPDATE_UNCHANGED:
                    prop.__set__(self, new)
            assert prop.name is not None
            values[prop.name] = prop.get_value_for_datastore(self)
            if not prop.indexed:
                unindexed.add(prop.name)
        return values, unindexed

    def _to_entity(self) -> datastore.Entity:
        """The entity to put for this instance (applying ``auto_now``-style updates)."""
        if self._kiln_projection is not None:
            raise BadRequestError("Cannot put a partial entity: this instance came from a projection query")
        values, unindexed = self._kiln_values(update=True)
        key = self._kiln_key
        if key is not None:
            entity = datastore.Entity(key.kind(), parent=key.parent(), name=key.name(), id=key.id(),
                                      namespace=key.namespace(), _app=key.app() or None)
        else:
            entity = datastore.Entity(self.kind(), parent=self._kiln_parent_key)
        keep_empty = {p.name for p in self._properties.values()
                      if isinstance(p, ListProperty) and p.write_empty_list}
        for name, value in values.items():
            if isinstance(value, list) and not value and name not in keep_empty:
                continue  # App Engine does not write empty lists
            entity[name] = value
        entity.set_unindexed_properties(unindexed & set(entity))
        return entity

    def _kiln_saved_as(self, key: Key) -> None:
        self._kiln_key = key
        self._kiln_saved = True

    @classmethod
    def from_entity(cls: type[M], entity: datastore.Entity, _projection: Iterable[str] | None = None) -> M:
        """Build an instance of this class from a datastore entity of its kind.

        Raises:
            KindError: the entity is of another kind.
            BadValueError: a stored value does not satisfy the property's rules.
        """
        if entity.kind() != cls.kind():
            raise KindError(f"Class {cls.__name__} cannot handle kind '{entity.kind()}'")
        instance = cls.__new__(cls)
        instance._kiln_prepare()
        instance._kiln_key = entity.key() if entity.key().has_id_or_name() else None
        instance._kiln_parent_key = entity.key().parent()
        instance._kiln_saved = instance._kiln_key is not None
        projection = tuple(_projection) if _projection is not None else None
        instance._kiln_projection = projection
        for prop in cls._properties.values():
            assert prop.name is not None  # set by __property_config__
            if prop.name in entity:
                prop.__set__(instance, prop.make_value_from_datastore(entity[prop.name]))
            elif projection is None:
                prop.__set__(instance, prop.default_value())
        instance._kiln_load_dynamic(entity)
        return instance

    def _kiln_load_dynamic(self, entity: datastore.Entity) -> None:
        """Expando keeps the entity's undeclared properties; a Model ignores them."""

    # -- datastore operations --

    def put(self) -> Key:
        """Write the instance; returns its (complete) key."""
        key: Key = datastore.Put(self._to_entity())
        self._kiln_saved_as(key)
        return key

    save = put

    def delete(self) -> None:
        """Delete the entity; the instance keeps its key but is no longer saved."""
        datastore.Delete(self.key())
        self._kiln_saved = False

    @classmethod
    def get(cls: type[M], keys: Any, **kwargs: Any) -> Any:
        """Fetch instances by key (``None`` where missing).

        Raises:
            KindError: a key is of another kind than this class.
        """
        single = not isinstance(keys, (list, tuple))
        key_list = _normalize_keys([keys] if single else keys)
        if cls is not Model:
            for key in key_list:
                registered = _kind_map.get(key.kind())
                if registered is None or not issubclass(registered, cls):
                    raise KindError(f"Kind {key.kind()!r} is not a subclass of kind {cls.kind()!r}")
        found = get(key_list)
        return found[0] if single else found

    @classmethod
    def get_by_id(cls: type[M], ids: int | Iterable[int], parent: Model | Key | str | None = None,
                  **kwargs: Any) -> Any:
        """Fetch instances of this kind by integer id (``None`` where missing)."""
        single = isinstance(ids, int)
        id_list = [ids] if isinstance(ids, int) else list(ids)
        parent_key = _parent_key(parent)
        for ident in id_list:
            if isinstance(ident, bool) or not isinstance(ident, int) or ident <= 0:
                raise BadArgumentError(f"get_by_id takes positive integer ids, got {ident!r}")
        keys = [Key.from_path(cls.kind(), i, parent=parent_key) for i in id_list]
        return cls.get(keys[0] if single else keys)

    @classmethod
    def get_by_key_name(cls: type[M], key_names: str | Iterable[str],
                        parent: Model | Key | str | None = None, **kwargs: Any) -> Any:
        """Fetch instances of this kind by key name (``None`` where missing)."""
        single = isinstance(key_names, str)
        names = [key_names] if isinstance(key_names, str) else list(key_names)
        parent_key = _parent_key(parent)
        for name in names:
            if not isinstance(name, str) or not name:
                raise BadArgumentError(f"get_by_key_name takes non-empty string names, got {name!r}")
        keys = [Key.from_path(cls.kind(), name, parent=parent_key) for name in names]
        return cls.get(keys[0] if single else keys)

    @classmethod
    def get_or_insert(cls: type[M], key_name: str, **kwds: Any) -> M:
        """The instance with ``key_name`` (and ``parent=``), created from ``kwds`` if it does not exist.

        Runs in a transaction, so two concurrent callers get the same entity.
        """
        def txn() -> M:
            entity = cls.get_by_key_name(key_name, parent=kwds.get("parent"))
            if entity is None:
                entity = cls(key_name=key_name, **kwds)
                entity.put()
            return entity  # type: ignore[no-any-return]

        options = datastore.TransactionOptions(propagation=datastore.TransactionOptions.ALLOWED)
        result = datastore.RunInTransactionOptions(options, txn)
        assert result is not None  # txn never raises Rollback
        return result

    @classmethod
    def all(cls, keys_only: bool = False, **kwds: Any) -> Query:
        """A query over every entity of this kind."""
        from kiln.ext.db._query import Query
        return Query(cls, keys_only=keys_only, **kwds)

    @classmethod
    def gql(cls, query_string: str, *args: Any, **kwds: Any) -> GqlQuery:
        """``GqlQuery("SELECT * FROM <kind> " + query_string, *args, **kwds)``."""
        from kiln.ext.db._query import GqlQuery
        return GqlQuery(f"SELECT * FROM {_quote_kind(cls.kind())} {query_string}", *args, **kwds)


_model_defined = True


class Expando(Model):
    """A model that also stores any attribute assigned to it as a (dynamic) property.

    Declared properties are validated as on a Model; dynamic ones may hold any
    value the datastore can store. Attributes starting with ``_`` are ordinary
    Python attributes, never stored.
    """

    def __init__(self, parent: Model | Key | str | None = None, key_name: str | None = None,
                 _app: str | None = None, **kwds: Any) -> None:
        super().__init__(parent, key_name, _app, **kwds)
        for name, value in kwds.items():
            if name not in self._properties and name not in ("key", "id"):
                setattr(self, name, value)

    def _kiln_prepare(self) -> None:
        object.__setattr__(self, "_kiln_dynamic", {})
        super()._kiln_prepare()

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in self._properties or hasattr(type(self), name):
            super().__setattr__(name, value)
            return
        if isinstance(value, Model):
            raise BadValueError(f"Property {name}: store a model's key(), not the model instance")
        if isinstance(value, (list, tuple)):
            value = list(value)
        to_value(value, name=f"Property {name}")  # BadValueError for a type the datastore cannot store
        self._kiln_dynamic[name] = value

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, i.e. for dynamic properties.
        dynamic = self.__dict__.get("_kiln_dynamic")
        if dynamic is not None and name in dynamic:
            return dynamic[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        dynamic = self.__dict__.get("_kiln_dynamic")
        if dynamic is not None and name in dynamic:
            del dynamic[name]
        else:
            super().__delattr__(name)

    def dynamic_properties(self) -> list[str]:
        return list(self._kiln_dynamic)

    def _kiln_values(self, *, update: bool) -> tuple[dict[str, Any], set[str]]:
        values, unindexed = super()._kiln_values(update=update)
        for name, value in self._kiln_dynamic.items():
            values[name] = list(value) if isinstance(value, list) else value
        return values, unindexed

    def _kiln_load_dynamic(self, entity: datastore.Entity) -> None:
        for name, value in entity.items():
            if name not in self._all_properties:
                self._kiln_dynamic[name] = value


# -- references ------------------------------------------------------------------------------------


class _SelfReference:
    """Marks a ReferenceProperty whose class is the model being defined."""


_SELF_REFERENCE = _SelfReference()


class ReferenceProperty(Property):
    """A reference to another model instance, stored as its key.

    Reading the attribute fetches the referenced instance (once; it is then
    cached on the instance). The referenced class gets a back-reference,
    ``collection_name`` (default ``<referencing class>_set``), a query for the
    instances that refer to it.

    Raises on read:
        ReferencePropertyResolveError: the referenced entity does not exist.
    """

    data_type: type[Model]  # always a Model class here (Property's is any type)

    def __init__(self, reference_class: type[Model] | _SelfReference | None = None,
                 verbose_name: str | None = None, collection_name: str | None = None, **attrs: Any) -> None:
        super().__init__(verbose_name, **attrs)
        self.collection_name = collection_name
        if reference_class is None:
            reference_class = Model
        if not (reference_class is _SELF_REFERENCE
                or (isinstance(reference_class, type) and issubclass(reference_class, Model))):
            raise KindError("reference_class must be a Model class")
        self.reference_class: Any = reference_class
        self.data_type = reference_class if isinstance(reference_class, type) else Model

    def __property_config__(self, model_class: type[Model], property_name: str) -> None:
        super().__property_config__(model_class, property_name)
        if self.reference_class is _SELF_REFERENCE:
            self.reference_class = self.data_type = model_class
        if self.collection_name is None:
            self.collection_name = f"{model_class.__name__.lower()}_set"
        existing = getattr(self.reference_class, self.collection_name, None)
        if existing is not None and not (isinstance(existing, _ReverseReferenceProperty)
                                         and existing.model_name == model_class.__name__
                                         and existing.prop_name == self.name):
            raise DuplicatePropertyError(
                f"Class {self.reference_class.__name__} already has property {self.collection_name}")
        assert self.name is not None
        setattr(self.reference_class, self.collection_name, _ReverseReferenceProperty(model_class, self.name))

    def _resolved_attr_name(self) -> str:
        return "_RESOLVED" + self._attr_name()

    def __get__(self, model_instance: Any, model_class: Any = None) -> Any:
        if model_instance is None:
            return self
        resolved = getattr(model_instance, self._resolved_attr_name(), None)
        if resolved is not None:
            return resolved
        key = getattr(model_instance, self._attr_name(), None)
        if key is None:
            return None
        instance = get(key)
        if instance is None:
            raise ReferencePropertyResolveError(
                f"ReferenceProperty {self.name} failed to be resolved: {key.to_path()}")
        setattr(model_instance, self._resolved_attr_name(), instance)
        return instance

    def __set__(self, model_instance: Any, value: Any) -> None:
        value = self.validate(value)
        if isinstance(value, Model):
            setattr(model_instance, self._attr_name(), value.key())
            setattr(model_instance, self._resolved_attr_name(), value)
        else:
            setattr(model_instance, self._attr_name(), value)
            setattr(model_instance, self._resolved_attr_name(), None)

    def get_value_for_datastore(self, model_instance: Any) -> Any:
        """The referenced key (without fetching the referenced entity)."""
        return getattr(model_instance, self._attr_name(), None)

    def validate(self, value: Any) -> Any:
        if isinstance(value, str):
            value = Key(value)
        if isinstance(value, Key):
            if not value.has_id_or_name():
                raise BadValueError(f"Property {self.name}: a reference key must be complete")
            return super().validate(value)
        if value is not None and isinstance(value, Model) and not value.has_key():
            raise BadValueError(
                f"{value.kind()} instance must have a complete key before it can be stored as a reference")
        value = super().validate(value)
        if value is not None and not isinstance(value, self.data_type):
            raise KindError(f"Property {self.name} must be an instance of {self.data_type.kind()}")
        return value


class SelfReferenceProperty(ReferenceProperty):
    """A reference to another instance of the same model class."""

    def __init__(self, verbose_name: str | None = None, collection_name: str | None = None,
                 **attrs: Any) -> None:
        if "reference_class" in attrs:
            raise BadArgumentError("SelfReferenceProperty takes no reference_class")
        super().__init__(_SELF_REFERENCE, verbose_name, collection_name, **attrs)


class _ReverseReferenceProperty:
    """The back-reference a ReferenceProperty adds to the referenced class: a query, read-only."""

    def __init__(self, model: type[Model], prop_name: str) -> None:
        self._model = model
        self.model_name = model.__name__
        self.prop_name = prop_name

    def __get__(self, model_instance: Any, model_class: Any = None) -> Any:
        if model_instance is None:
            return self
        from kiln.ext.db._query import Query
        return Query(self._model).filter(f"{self.prop_name} =", model_instance.key())

    def __set__(self, model_instance: Any, value: Any) -> None:
        raise BadValueError("Virtual property is read-only")


# -- functions -------------------------------------------------------------------------------------


def _normalize_keys(items: Iterable[Any]) -> list[Key]:
    out = []
    for item in items:
        if isinstance(item, Model):
            out.append(item.key())
        elif isinstance(item, Key):
            out.append(item)
        elif isinstance(item, str):
            out.append(Key(item))
        else:
            raise BadArgumentError(f"expected a Key, an encoded key string or a model instance, got {item!r}")
    return out


def _model_from_entity(entity: datastore.Entity, projection: Iterable[str] | None = None) -> Model:
    return class_for_kind(entity.kind()).from_entity(entity, _projection=projection)


def get(keys: Any, **kwargs: Any) -> Any:
    """Fetch model instances by key, key string or instance; ``None`` where missing.

    Raises:
        KindError: an entity's kind has no model class.
    """
    single = not isinstance(keys, (list, tuple))
    key_list = _normalize_keys([keys] if single else keys)
    entities = datastore.Get(key_list) if key_list else []
    models = [None if e is None else _model_from_entity(e) for e in entities]
    return models[0] if single else models


def put(models: Any, **kwargs: Any) -> Any:
    """Write one model instance or a list in one call; returns the key(s)."""
    single = not isinstance(models, (list, tuple))
    batch = [models] if single else list(models)
    for model in batch:
        if not isinstance(model, Model):
            raise BadArgumentError(f"put takes model instances, got {type(model).__name__}")
    keys = datastore.Put([m._to_entity() for m in batch]) if batch else []
    for model, key in zip(batch, keys):
        model._kiln_saved_as(key)
    return keys[0] if single else keys


save = put


def delete(models: Any, **kwargs: Any) -> None:
    """Delete by model instance, key or key string (one or a list)."""
    batch = list(models) if isinstance(models, (list, tuple)) else [models]
    datastore.Delete(_normalize_keys(batch))
    for model in batch:
        if isinstance(model, Model):
            model._kiln_saved = False


def allocate_ids(model: Any, size: int, **kwargs: Any) -> tuple[int, int]:
    """Reserve ``size`` ids for the kind (and parent) of ``model`` (an instance, key or model class)."""
    if isinstance(model, type) and issubclass(model, Model):
        key = Key.from_path(model.kind(), 1)
    else:
        (key,) = _normalize_keys([model])
    return datastore.AllocateIds(key, size=size)


def to_dict(model_instance: Model, dictionary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The instance's stored values by property name (references as keys)."""
    out = {} if dictionary is None else dictionary
    values, _ = model_instance._kiln_values(update=False)
    out.update(values)
    return out

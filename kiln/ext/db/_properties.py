"""Property classes of the model layer: declaration, validation and datastore conversion.

A property is a descriptor on a model class. Assigning to it validates the
value (type, ``required``, ``choices``, ``validator``) and raises
:class:`BadValueError` naming the property, so a bad value is caught where it
is set rather than when the entity is written. The rules and messages follow
App Engine's ``google.appengine.ext.db``.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kiln.api import users
from kiln.api.datastore_errors import BadValueError
from kiln.api.datastore_types import (
    IM, Blob, BlobKey, ByteString, Category, Email, GeoPt, Key, Link, PhoneNumber, PostalAddress, Rating,
    Text,
)
from kiln.ext.db._errors import ConfigurationError

if TYPE_CHECKING:
    from kiln.ext.db._model import Model

#: Indexed strings and byte strings are limited to 1500 bytes (App Engine's limit).
MAX_INDEXED_BYTES = 1500
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _Unchanged:
    def __repr__(self) -> str:
        return "AUTO_UPDATE_UNCHANGED"


#: What ``get_updated_value_for_datastore`` returns for a property that does not update itself on put.
AUTO_UPDATE_UNCHANGED: Any = _Unchanged()


def _utcnow() -> datetime.datetime:
    # The datastore keeps naive UTC datetimes, as App Engine's servers (which ran in UTC) did.
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _current_user() -> users.User | None:
    """The signed-in user of this request, or ``None``."""
    try:
        return users.User()
    except users.UserNotFoundError:
        return None


class Property:
    """A typed, validated attribute of a model, stored as one entity property.

    Args:
        verbose_name: a human-readable name (for forms).
        name: the datastore property name; defaults to the attribute name.
        default: the value a new instance starts with.
        required: an empty value (``None``, and for most types ``''`` or ``[]``)
            is rejected.
        validator: called with each value being assigned; raises to reject it.
        choices: the only values allowed.
        indexed: ``False`` keeps the property out of indexes (no queries on it).
    """

    creation_counter = 0
    data_type: type = str

    def __init__(self, verbose_name: str | None = None, name: str | None = None, default: Any = None,
                 required: bool = False, validator: Callable[[Any], Any] | None = None,
                 choices: Iterable[Any] | None = None, indexed: bool = True) -> None:
        self.verbose_name = verbose_name
        self.name = name
        self.default = default
        self.required = required
        self.validator = validator
        self.choices = list(choices) if choices is not None else None
        self.indexed = indexed
        self.model_class: type[Model] | None = None
        self._attr = name
        self.creation_counter = Property.creation_counter
        Property.creation_counter += 1

    def __property_config__(self, model_class: type[Model], property_name: str) -> None:
        """Called by the model's metaclass once the property knows its class and attribute name."""
        self.model_class = model_class
        self._attr = property_name
        if self.name is None:
            self.name = property_name

    def _attr_name(self) -> str:
        """Where an instance keeps the value (``_`` + attribute name, as App Engine does)."""
        return "_" + (self._attr or "")

    def __get__(self, model_instance: Any, model_class: Any = None) -> Any:
        if model_instance is None:
            return self
        try:
            return getattr(model_instance, self._attr_name())
        except AttributeError:
            return None

    def __set__(self, model_instance: Any, value: Any) -> None:
        value = self.validate(value)
        setattr(model_instance, self._attr_name(), value)

    def default_value(self) -> Any:
        """The value a new instance starts with."""
        return self.default

    def empty(self, value: Any) -> bool:
        """Whether ``value`` counts as no value for ``required`` (``not value`` for most types)."""
        return not value

    def validate(self, value: Any) -> Any:
        """Check ``value`` and return it (possibly converted, e.g. ``str`` to ``Text``).

        Raises:
            BadValueError: naming the property and what is wrong.
        """
        if self.empty(value):
            if self.required:
                raise BadValueError(f"Property {self.name} is required")
        elif self.choices is not None and value not in self.choices:
            raise BadValueError(f"Property {self.name} is {value!r}; must be one of {self.choices!r}")
        if self.validator is not None:
            self.validator(value)
        return value

    def get_value_for_datastore(self, model_instance: Any) -> Any:
        """The value to store for ``model_instance``."""
        return self.__get__(model_instance, type(model_instance))

    def get_updated_value_for_datastore(self, model_instance: Any) -> Any:
        """A new value to set on every put (``auto_now``…), or :data:`AUTO_UPDATE_UNCHANGED`."""
        return AUTO_UPDATE_UNCHANGED

    def make_value_from_datastore(self, value: Any) -> Any:
        """The Python value for a stored ``value``."""
        return value

    def datastore_type(self) -> type:
        return self.data_type

    def _type_error(self, expected: str, value: Any) -> BadValueError:
        return BadValueError(f"Property {self.name} must be {expected}, not a {type(value).__name__}")


class _StringLike(Property):
    """Shared checks of indexed string types: a ``str``, at most 1500 bytes."""

    def _check_length(self, value: str) -> None:
        size = len(value.encode("utf-8"))
        if size > MAX_INDEXED_BYTES:
            raise BadValueError(
                f"Property {self.name} is {size} bytes long; it must be {MAX_INDEXED_BYTES} or less. "
                "Consider TextProperty instead, which can store strings of any length.")


class StringProperty(_StringLike):
    """A short string (at most 1500 bytes), indexed; no newlines unless ``multiline=True``."""

    data_type = str

    def __init__(self, verbose_name: str | None = None, multiline: bool = False, **kwds: Any) -> None:
        super().__init__(verbose_name, **kwds)
        self.multiline = multiline

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._type_error("a str", value)
        if not self.multiline and "\n" in value:
            raise BadValueError(f"Property {self.name} is not multi-line")
        self._check_length(value)
        return value


class TextProperty(Property):
    """Long text of any length; never indexed."""

    data_type = Text

    def __init__(self, verbose_name: str | None = None, **kwds: Any) -> None:
        kwds["indexed"] = False
        super().__init__(verbose_name, **kwds)

    def validate(self, value: Any) -> Any:
        if value is not None and not isinstance(value, Text):
            if not isinstance(value, str):
                raise self._type_error("a str or Text", value)
            value = Text(value)
        return super().validate(value)


class _BytesProperty(Property):
    data_type: type = bytes

    def validate(self, value: Any) -> Any:
        if value is not None and not isinstance(value, self.data_type):
            if not isinstance(value, (bytes, bytearray)):
                raise self._type_error(f"bytes or {self.data_type.__name__}", value)
            value = self.data_type(value)
        return super().validate(value)


class ByteStringProperty(_BytesProperty):
    """Short binary data (at most 1500 bytes), indexed."""

    data_type = ByteString

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is not None and len(value) > MAX_INDEXED_BYTES:
            raise BadValueError(
                f"Property {self.name} is {len(value)} bytes long; it must be {MAX_INDEXED_BYTES} or less. "
                "Consider BlobProperty instead, which can store data of any size.")
        return value


class BlobProperty(_BytesProperty):
    """Binary data of any size; never indexed."""

    data_type = Blob

    def __init__(self, verbose_name: str | None = None, **kwds: Any) -> None:
        kwds["indexed"] = False
        super().__init__(verbose_name, **kwds)


class BooleanProperty(Property):
    """``True`` or ``False``."""

    data_type = bool

    def empty(self, value: Any) -> bool:
        return value is None  # False is a value

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is not None and not isinstance(value, bool):
            raise self._type_error("a bool", value)
        return value


class IntegerProperty(Property):
    """A 64-bit signed integer."""

    data_type = int

    def empty(self, value: Any) -> bool:
        return value is None  # 0 is a value

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._type_error("an int", value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise BadValueError(f"Property {self.name} must fit in 64 bits")
        return value


class FloatProperty(Property):
    """A double-precision float (App Engine accepts only ``float`` values, not ints)."""

    data_type = float

    def empty(self, value: Any) -> bool:
        return value is None  # 0.0 is a value

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is not None and not isinstance(value, float):
            raise self._type_error("a float", value)
        return value


class DateTimeProperty(Property):
    """A ``datetime.datetime`` (stored in UTC, read back naive).

    Args:
        auto_now: set to the current time on every put.
        auto_now_add: set to the current time when the instance is created.
    """

    data_type: type = datetime.datetime

    def __init__(self, verbose_name: str | None = None, auto_now: bool = False, auto_now_add: bool = False,
                 **kwds: Any) -> None:
        super().__init__(verbose_name, **kwds)
        self.auto_now = auto_now
        self.auto_now_add = auto_now_add

    @staticmethod
    def now() -> Any:
        return _utcnow()

    def default_value(self) -> Any:
        if self.auto_now or self.auto_now_add:
            return self.now()
        return super().default_value()

    def get_updated_value_for_datastore(self, model_instance: Any) -> Any:
        return self.now() if self.auto_now else AUTO_UPDATE_UNCHANGED

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is not None and not isinstance(value, datetime.datetime):
            raise self._type_error("a datetime", value)
        return value


class DateProperty(DateTimeProperty):
    """A ``datetime.date`` (stored as midnight UTC of that day)."""

    data_type = datetime.date

    @staticmethod
    def now() -> Any:
        return _utcnow().date()

    def validate(self, value: Any) -> Any:
        value = Property.validate(self, value)
        if value is None:
            return None
        if isinstance(value, datetime.datetime):
            raise BadValueError(f"Property {self.name} must be a date, not a datetime")
        if not isinstance(value, datetime.date):
            raise self._type_error("a date", value)
        return value

    def make_value_from_datastore(self, value: Any) -> Any:
        return value.date() if isinstance(value, datetime.datetime) else value


class TimeProperty(DateTimeProperty):
    """A ``datetime.time`` (stored as that time on 1970-01-01 UTC)."""

    data_type = datetime.time

    @staticmethod
    def now() -> Any:
        return _utcnow().time()

    def validate(self, value: Any) -> Any:
        value = Property.validate(self, value)
        if value is not None and not isinstance(value, datetime.time):
            raise self._type_error("a time", value)
        return value

    def make_value_from_datastore(self, value: Any) -> Any:
        return value.time() if isinstance(value, datetime.datetime) else value


class UserProperty(Property):
    """A :class:`kiln.api.users.User`.

    Args:
        auto_current_user: set to the signed-in user on every put.
        auto_current_user_add: set to the signed-in user when the instance is created.
    """

    data_type = users.User

    def __init__(self, verbose_name: str | None = None, name: str | None = None, required: bool = False,
                 validator: Callable[[Any], Any] | None = None, choices: Iterable[Any] | None = None,
                 auto_current_user: bool = False, auto_current_user_add: bool = False,
                 indexed: bool = True) -> None:
        super().__init__(verbose_name, name, required=required, validator=validator, choices=choices,
                         indexed=indexed)
        self.auto_current_user = auto_current_user
        self.auto_current_user_add = auto_current_user_add

    def default_value(self) -> Any:
        if self.auto_current_user or self.auto_current_user_add:
            return _current_user()
        return None

    def get_updated_value_for_datastore(self, model_instance: Any) -> Any:
        return _current_user() if self.auto_current_user else AUTO_UPDATE_UNCHANGED

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is not None and not isinstance(value, users.User):
            raise self._type_error("a User", value)
        return value


#: Types a ListProperty may hold (and an Expando may store).
ALLOWED_ITEM_TYPES: tuple[type, ...] = (
    str, bool, int, float, Key, datetime.datetime, datetime.date, datetime.time, Text, Blob, ByteString,
    users.User, Category, Link, Email, GeoPt, IM, PhoneNumber, PostalAddress, Rating, BlobKey,
)
_UNINDEXED_TYPES = (Text, Blob)


class ListProperty(Property):
    """A list of values of one type; each value is indexed (queries match any element).

    An empty list is not written (unless ``write_empty_list=True``), as on App
    Engine; it reads back as the default, ``[]``. ``required`` is always on:
    the value may be empty but not ``None``.
    """

    data_type = list

    def __init__(self, item_type: type, verbose_name: str | None = None, default: Any = None,
                 write_empty_list: bool = False, **kwds: Any) -> None:
        if not isinstance(item_type, type) or not issubclass(item_type, ALLOWED_ITEM_TYPES):
            raise ValueError(f"item_type {item_type!r} is not a supported type")
        if item_type is list:
            raise ValueError("lists of lists are not supported")
        if kwds.get("required") is False:
            raise ConfigurationError("a ListProperty is always required (an empty list is a value)")
        kwds["required"] = True
        if issubclass(item_type, _UNINDEXED_TYPES):
            kwds["indexed"] = False
        super().__init__(verbose_name, default=[] if default is None else default, **kwds)
        self.item_type = item_type
        self.write_empty_list = write_empty_list

    def empty(self, value: Any) -> bool:
        return value is None  # [] is a value

    def default_value(self) -> Any:
        # A copy, so instances do not share (and mutate) one default list.
        return list(super().default_value())

    def validate(self, value: Any) -> Any:
        value = super().validate(value)
        if value is not None:
            if not isinstance(value, (list, tuple)):
                raise self._type_error("a list", value)
            value = self.validate_list_contents(list(value))
        return value

    def validate_list_contents(self, value: list[Any]) -> list[Any]:
        """Check (and where App Engine does, convert) every item."""
        out = []
        for item in value:
            if self.item_type is Text and isinstance(item, str):
                item = Text(item)
            elif self.item_type in (Blob, ByteString) and isinstance(item, (bytes, bytearray)):
                item = self.item_type(item)
            bad_bool = isinstance(item, bool) and self.item_type is int
            if bad_bool or not isinstance(item, self.item_type):
                raise BadValueError(
                    f"Items in the {self.name} list must all be {self.item_type.__name__} instances, "
                    f"not {type(item).__name__}")
            out.append(item)
        return out

    def get_value_for_datastore(self, model_instance: Any) -> Any:
        value = super().get_value_for_datastore(model_instance)
        return None if value is None else list(value)

    def make_value_from_datastore(self, value: Any) -> Any:
        if value is None:
            return []
        # A projection query returns one element of a list property per result.
        return list(value) if isinstance(value, list) else [value]


class StringListProperty(ListProperty):
    """``ListProperty(str)``."""

    def __init__(self, verbose_name: str | None = None, default: Any = None, **kwds: Any) -> None:
        super().__init__(str, verbose_name, default, **kwds)


class _CoercingProperty(Property):
    """A property of one of the datastore's string-based types; plain strings are converted to it."""

    def validate(self, value: Any) -> Any:
        if value is not None and not isinstance(value, self.data_type):
            value = self._coerce(value)
        value = super().validate(value)
        if value is not None:
            self._check(value)
        return value

    def _coerce(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise self._type_error(f"a {self.data_type.__name__} or str", value)
        return self.data_type(value)

    def _check(self, value: Any) -> None:
        if isinstance(value, str):
            if not value:
                raise BadValueError(f"Property {self.name}: a {self.data_type.__name__} must not be empty")
            size = len(value.encode("utf-8"))
            if size > MAX_INDEXED_BYTES:
                raise BadValueError(
                    f"Property {self.name} is {size} bytes long; it must be {MAX_INDEXED_BYTES} or less")


class LinkProperty(_CoercingProperty):
    """A full URL (scheme and host), as :class:`Link`."""

    data_type = Link

    def _check(self, value: Any) -> None:
        super()._check(value)
        parts = urllib.parse.urlsplit(value)
        if not parts.scheme or not parts.netloc:
            raise BadValueError(f"Property {self.name} must be a full URL ({value!r})")


class EmailProperty(_CoercingProperty):
    """An email address, as :class:`Email`."""

    data_type = Email


class CategoryProperty(_CoercingProperty):
    """A category or tag, as :class:`Category`."""

    data_type = Category


class PhoneNumberProperty(_CoercingProperty):
    """A phone number, as :class:`PhoneNumber`."""

    data_type = PhoneNumber


class PostalAddressProperty(_CoercingProperty):
    """A postal address, as :class:`PostalAddress`."""

    data_type = PostalAddress


class IMProperty(_CoercingProperty):
    """An instant-messaging handle ``"protocol address"``, as :class:`IM`."""

    data_type = IM

    def _check(self, value: Any) -> None:
        super()._check(value)
        protocol, _, address = value.partition(" ")
        if not protocol or not address.strip():
            raise BadValueError(f"Property {self.name} must be 'protocol address', got {value!r}")


class GeoPtProperty(_CoercingProperty):
    """A geographical point, as :class:`GeoPt` (a ``"lat,lon"`` string is converted)."""

    data_type = GeoPt

    def _coerce(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise self._type_error("a GeoPt or a 'lat,lon' str", value)
        try:
            return GeoPt(value)
        except (ValueError, BadValueError) as exc:
            raise BadValueError(f"Property {self.name}: {value!r} is not a GeoPt ({exc})") from None


class RatingProperty(_CoercingProperty):
    """A rating from 0 to 100, as :class:`Rating`."""

    data_type = Rating

    def empty(self, value: Any) -> bool:
        return value is None  # 0 is a rating

    def _coerce(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._type_error("an int from 0 to 100", value)
        return Rating(value)

    def _check(self, value: Any) -> None:
        if not 0 <= value <= 100:
            raise BadValueError(f"Property {self.name} must be between 0 and 100, got {int(value)}")

"""The model layer for the datastore, mirroring ``google.appengine.ext.db``.

Porting an App Engine app means changing ``from google.appengine.ext import db``
to ``from kiln.ext import db``; the documentation's examples then run as
they are::

    class Greeting(db.Model):
        author = db.UserProperty()
        content = db.StringProperty(multiline=True)
        date = db.DateTimeProperty(auto_now_add=True)

    Greeting(parent=book_key, content="Hello").put()
    greetings = Greeting.all().ancestor(book_key).order("-date").fetch(10)
    same = db.GqlQuery("SELECT * FROM Greeting WHERE ANCESTOR IS :1 ORDER BY date DESC LIMIT 10", book_key)

It is built on :mod:`kiln.api.datastore` (entities, queries, transactions)
and shares its errors, which are re-exported here under App Engine's names.
"""

from kiln.api.datastore import CreateTransactionOptions as create_transaction_options
from kiln.api.datastore import IsInTransaction as is_in_transaction
from kiln.api.datastore import RunInTransaction as run_in_transaction
from kiln.api.datastore import RunInTransactionCustomRetries as run_in_transaction_custom_retries
from kiln.api.datastore import RunInTransactionOptions as run_in_transaction_options
from kiln.api.datastore import TransactionOptions
from kiln.api.datastore_errors import (
    BadArgumentError, BadFilterError, BadKeyError, BadPropertyError, BadQueryError, BadRequestError,
    BadValueError, CommittedButStillApplying, EntityNotFoundError, Error, InternalError, NeedIndexError,
    QueryNotFoundError, ReferencePropertyResolveError, Rollback, Timeout, TransactionFailedError,
    TransactionNotFoundError,
)
from kiln.api.datastore_types import (
    IM, Blob, BlobKey, ByteString, Category, Email, GeoPt, Key, Link, PhoneNumber, PostalAddress, Rating,
    Text,
)
from kiln.ext.db._errors import (
    ConfigurationError, DerivedPropertyError, DuplicatePropertyError, KindError, NotSavedError,
    PropertyError, ReservedWordError,
)
from kiln.ext.db._model import (
    Expando, Model, PropertiedClass, ReferenceProperty, SelfReferenceProperty, allocate_ids, class_for_kind,
    delete, get, put, save, to_dict,
)
from kiln.ext.db._properties import (
    AUTO_UPDATE_UNCHANGED, BlobProperty, BooleanProperty, ByteStringProperty, CategoryProperty,
    DateProperty, DateTimeProperty, EmailProperty, FloatProperty, GeoPtProperty, IMProperty,
    IntegerProperty, LinkProperty, ListProperty, PhoneNumberProperty, PostalAddressProperty, Property,
    RatingProperty, StringListProperty, StringProperty, TextProperty, TimeProperty, UserProperty,
)
from kiln.ext.db._query import GqlQuery, Query

__all__ = [
    "AUTO_UPDATE_UNCHANGED", "BadArgumentError", "BadFilterError", "BadKeyError", "BadPropertyError",
    "BadQueryError", "BadRequestError", "BadValueError", "Blob", "BlobKey", "BlobProperty",
    "BooleanProperty", "ByteString", "ByteStringProperty", "Category", "CategoryProperty",
    "CommittedButStillApplying", "ConfigurationError", "DateProperty", "DateTimeProperty",
    "DerivedPropertyError", "DuplicatePropertyError", "Email", "EmailProperty", "EntityNotFoundError",
    "Error", "Expando", "FloatProperty", "GeoPt", "GeoPtProperty", "GqlQuery", "IM", "IMProperty",
    "IntegerProperty", "InternalError", "Key", "KindError", "Link", "LinkProperty", "ListProperty", "Model",
    "NeedIndexError", "NotSavedError", "PhoneNumber", "PhoneNumberProperty", "PostalAddress",
    "PostalAddressProperty", "PropertiedClass", "Property", "PropertyError", "Query", "QueryNotFoundError",
    "Rating", "RatingProperty", "ReferenceProperty", "ReferencePropertyResolveError", "ReservedWordError",
    "Rollback", "SelfReferenceProperty", "StringListProperty", "StringProperty", "Text", "TextProperty",
    "TimeProperty", "Timeout", "TransactionFailedError", "TransactionNotFoundError", "TransactionOptions",
    "UserProperty", "allocate_ids", "class_for_kind", "create_transaction_options", "delete", "get",
    "is_in_transaction", "put", "run_in_transaction", "run_in_transaction_custom_retries",
    "run_in_transaction_options", "save", "to_dict",
]

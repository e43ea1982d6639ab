"""Models written as App Engine apps write them, with Google's SDK (imported once the ``gae_sdk`` fixture ran).

ndb models here keep ndb's caches off (the in-context cache would answer gets without a datastore call, and the
memcache cache needs kiln's memcache Service), so every test talks to the datastore.
"""

from __future__ import annotations

from google.appengine.ext import blobstore, db, ndb


class Model(ndb.Model):
    _use_cache = False
    _use_memcache = False


class Expando(ndb.Expando):
    _use_cache = False
    _use_memcache = False


class Address(ndb.Model):
    street = ndb.StringProperty()
    city = ndb.StringProperty()


class Every(Model):
    """One property of each kind ndb offers."""

    i = ndb.IntegerProperty()
    f = ndb.FloatProperty()
    b = ndb.BooleanProperty()
    s = ndb.StringProperty()
    text = ndb.TextProperty()
    ztext = ndb.TextProperty(compressed=True)
    blob = ndb.BlobProperty()
    iblob = ndb.BlobProperty(indexed=True)
    zblob = ndb.BlobProperty(compressed=True)
    dt = ndb.DateTimeProperty()
    d = ndb.DateProperty()
    t = ndb.TimeProperty()
    geo = ndb.GeoPtProperty()
    user = ndb.UserProperty()
    ref = ndb.KeyProperty()
    bk = ndb.BlobKeyProperty()
    js = ndb.JsonProperty()
    zjs = ndb.JsonProperty(compressed=True)
    pk = ndb.PickleProperty()
    tags = ndb.StringProperty(repeated=True)
    one = ndb.IntegerProperty(repeated=True)
    none = ndb.IntegerProperty(repeated=True)
    address = ndb.StructuredProperty(Address)
    addresses = ndb.StructuredProperty(Address, repeated=True)
    local = ndb.LocalStructuredProperty(Address)
    locals_ = ndb.LocalStructuredProperty(Address, repeated=True, name="locals")
    generic = ndb.GenericProperty()
    missing = ndb.StringProperty()


class Item(Model):
    name = ndb.StringProperty()
    n = ndb.IntegerProperty()
    color = ndb.StringProperty()
    size = ndb.IntegerProperty()
    tags = ndb.StringProperty(repeated=True)
    when = ndb.DateTimeProperty()


class Counter(Model):
    count = ndb.IntegerProperty(default=0)


class DbEvery(db.Model):
    """One property of each kind ext.db offers."""

    s = db.StringProperty()
    text = db.TextProperty()
    bs = db.ByteStringProperty()
    blob = db.BlobProperty()
    b = db.BooleanProperty()
    i = db.IntegerProperty()
    f = db.FloatProperty()
    dt = db.DateTimeProperty()
    d = db.DateProperty()
    t = db.TimeProperty()
    nums = db.ListProperty(int)
    words = db.StringListProperty()
    empty = db.ListProperty(int)
    user = db.UserProperty()
    geo = db.GeoPtProperty()
    link = db.LinkProperty()
    email = db.EmailProperty()
    category = db.CategoryProperty()
    phone = db.PhoneNumberProperty()
    address = db.PostalAddressProperty()
    rating = db.RatingProperty()
    im = db.IMProperty()
    ref = db.ReferenceProperty()
    bk = blobstore.BlobReferenceProperty()


class DbItem(db.Model):
    name = db.StringProperty()
    n = db.IntegerProperty()
    color = db.StringProperty()
    size = db.IntegerProperty()


class DbCounter(db.Model):
    count = db.IntegerProperty(default=0)


class Greeting(db.Model):
    """The guestbook tutorial's model."""

    author = db.UserProperty()
    content = db.StringProperty(multiline=True)
    date = db.DateTimeProperty(auto_now_add=True)


class Cached(ndb.Model):
    """A model with ndb's memcache-backed global cache on (ndb's default), the in-context cache off."""

    _use_cache = False
    value = ndb.IntegerProperty(default=0)

"""kiln's side of Google's App Engine SDK (``google.appengine``, the ``appengine-python-standard`` package).

Apps written for App Engine import Google's SDK: ndb, db, deferred and the API clients, which make every
service call through the SDK's API proxy (``google.appengine.api.apiproxy_stub_map.apiproxy``). The runtime
registers kiln's stub there for each App Engine service before the app's code runs; the stub translates each
call (App Engine's own protocol buffers, e.g. ``datastore_v3.Put``) into a call to kiln's gRPC service, made with
the app's own identity through :mod:`kiln.api._rpc`. It holds no more authority than the app already has.

Nothing here imports the SDK at package import: the modules below are loaded only in instances whose
environment has the SDK.
"""

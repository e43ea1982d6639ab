"""NATS auth callout: apps' NATS users without listing them in nats-server's configuration.

With static users (:func:`kiln_platform.natsauth.server_config`) every app must be in
the server's configuration, so adding an app means regenerating it and
reloading every server. With the auth callout the server lists only the
platform's user and asks this service about everyone else: nats-server sends
each connection's credentials on ``$SYS.REQ.USER.AUTH`` as a JWT it signs, and
takes the user JWT in the answer, which carries the user's permissions, if it
is signed by the configured issuer (an account nkey whose seed only this
service holds).

An app's user ``app-APP`` is let in when its password is the one derived
from the app secret (:func:`kiln_platform.natsauth.app_password`, as the instance
managers hand it out), with the same permissions as the static configuration
(:func:`kiln_platform.natsauth.app_permissions`). Anyone else is refused, with a reason
in the server's log. Run two or more replicas: they share one queue group,
and while none runs no app instance can connect (connections already open
stay).

The request is not encrypted (no ``xkey``): run it on the platform's
network, with TLS to the servers as for every NATS client.
"""

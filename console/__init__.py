"""kiln's web console: see and operate an app's services from a browser (``python -m console``).

It talks only to kiln's gRPC services, as the app it shows (:mod:`console.backend`); see ``console/README.md``.
"""

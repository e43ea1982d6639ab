"""kiln's platform code: what the router, the runtime, the services, the control plane and the CLI share.

Nothing here is for apps. App code may import only the ``kiln`` package (the App Engine API,
``kiln.ext``, ``kiln.runtime``'s public face and the generated contracts); the sandbox's import
guard refuses this package to app code (``runtime/sandbox.py``), and a test proves it. Keep it
that way: a module that apps need belongs in ``kiln``, and must hold no secret and no authority.
"""

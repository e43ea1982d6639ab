"""The router's credentials toward kiln's services, as the app whose request it handles.

The class lives in :mod:`kiln_platform.appcalls` (the console uses it too); this name stays for the router's code.
"""

from kiln_platform.appcalls import TOKEN_SECONDS, AppCredentials

__all__ = ["TOKEN_SECONDS", "AppCredentials"]

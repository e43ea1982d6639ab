"""``python -m urlfetch_svc``: run the URL fetch service."""

from urlfetch_svc.app import serve
from urlfetch_svc.config import UrlFetchConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("urlfetch_svc", UrlFetchConfig, serve))

"""``python -m datastore_svc``: run the datastore service."""

from datastore_svc.app import serve
from datastore_svc.config import DatastoreConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("datastore_svc", DatastoreConfig, serve))

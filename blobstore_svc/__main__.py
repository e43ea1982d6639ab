"""``python -m blobstore_svc``: run the Blobstore service."""

from blobstore_svc.app import serve
from blobstore_svc.config import BlobstoreConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("blobstore_svc", BlobstoreConfig, serve))

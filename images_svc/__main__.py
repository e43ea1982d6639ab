"""``python -m images_svc``: run the images service."""

from images_svc.app import serve
from images_svc.config import ImagesConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("images_svc", ImagesConfig, serve))

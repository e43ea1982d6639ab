"""``python -m memcache_svc``: run the memcache service."""

from memcache_svc.app import serve
from memcache_svc.config import MemcacheConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("memcache_svc", MemcacheConfig, serve))

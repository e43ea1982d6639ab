"""The ``X-AppEngine-Country``/``-Region``/``-City``/``-CityLatLong`` headers from a GeoIP database.

The database is a MaxMind DB file (GeoLite2/GeoIP2 City or Country, or any
file in that format) read with MaxMind's own reader. An address the database
does not know, a private or loopback address, or no database at all gives
country ``ZZ`` and no region, city or position, as App Engine does.
"""

from __future__ import annotations

import ipaddress
import logging
import pathlib
from typing import Any

log = logging.getLogger(__name__)

UNKNOWN = {"X-AppEngine-Country": "ZZ"}


class GeoIP:
    """Looks up addresses; thread-safe and cheap (the file is memory-mapped)."""

    def __init__(self, path: pathlib.Path | None) -> None:
        self._reader: Any = None
        if path is not None:
            import maxminddb
            self._reader = maxminddb.open_database(str(path))

    @property
    def fixed(self) -> bool:
        """Whether every address gets :data:`UNKNOWN` (no database): callers may compute the headers once."""
        return self._reader is None

    def headers(self, address: str) -> dict[str, str]:
        """The X-AppEngine location headers for a client address."""
        if self._reader is None:
            return dict(UNKNOWN)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return dict(UNKNOWN)
        if not ip.is_global:
            return dict(UNKNOWN)
        try:
            record = self._reader.get(str(ip))
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return dict(UNKNOWN)
        country = (record.get("country") or {}).get("iso_code")
        if not country:
            return dict(UNKNOWN)
        out = {"X-AppEngine-Country": str(country)}
        subdivisions = record.get("subdivisions") or []
        if subdivisions and subdivisions[0].get("iso_code"):
            out["X-AppEngine-Region"] = str(subdivisions[0]["iso_code"]).lower()
        city = ((record.get("city") or {}).get("names") or {}).get("en")
        if city:
            out["X-AppEngine-City"] = str(city).lower()
        location = record.get("location") or {}
        if "latitude" in location and "longitude" in location:
            out["X-AppEngine-CityLatLong"] = f"{float(location['latitude']):.6f},{float(location['longitude']):.6f}"
        return out

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

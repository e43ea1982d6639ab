"""images_svc's settings: App Engine's limits as defaults, overridable by env and flags, bad values named."""

from __future__ import annotations

import pytest

from images_svc.config import ImagesConfig
from kiln_platform import config
from kiln.errors import ConfigError

SECRET = {"KILN_IMAGES_SERVICE_SECRET": "s"}


def test_defaults_hold_a_32_mb_image_and_50_megapixels():
    cfg = config.load(ImagesConfig, prefix="IMAGES", env=SECRET)
    assert cfg.max_message_bytes > 32 * 1024 * 1024 and cfg.max_pixels == 50_000_000
    assert (cfg.workers, cfg.jpeg_draft, cfg.max_waiting) == (0, True, 64)


def test_env_and_flags_override():
    cfg = config.load(ImagesConfig, prefix="IMAGES", env={**SECRET, "KILN_IMAGES_MAX_MEGAPIXELS": "12.5"},
                      argv=["--workers", "3", "--no-jpeg-draft"])
    assert (cfg.max_pixels, cfg.workers, cfg.jpeg_draft) == (12_500_000, 3, False)


@pytest.mark.parametrize("argv, message", [(["--workers", "-1"], "workers"), (["--max-megapixels", "0"],
                                                                              "max_megapixels"),
                                           (["--max-waiting", "-2"], "max_waiting")])
def test_bad_values_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        config.load(ImagesConfig, prefix="IMAGES", env=SECRET, argv=argv)

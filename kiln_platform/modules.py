"""What App Engine's Modules API says of a version, read from its ``app.yaml``: its service (module) and scaling.

One home for the rule, used where the facts are gathered: the control plane (``deploy/control/modules.py``, every
deployed version) and the runtime under ``kiln dev`` (the one version it runs).
"""

from __future__ import annotations

from kiln.pb.modules.v1 import modules_pb2 as pb
from kiln_platform import appyaml

__all__ = ["DEFAULT_MODULE", "module_name", "module_version"]

DEFAULT_MODULE = "default"


def module_name(config: appyaml.AppConfig) -> str:
    """The service a version belongs to: app.yaml's ``service`` (or ``module``), else ``default``."""
    return config.service or DEFAULT_MODULE


def module_version(config: appyaml.AppConfig, version_id: str) -> pb.ModuleVersion:
    """The version as the Modules API describes it: its scaling and, for manual/basic scaling, its instances."""
    if config.manual_scaling is not None:
        return pb.ModuleVersion(version_id=version_id, scaling=pb.SCALING_MANUAL,
                                instances=config.manual_scaling.instances)
    if config.basic_scaling is not None:
        return pb.ModuleVersion(version_id=version_id, scaling=pb.SCALING_BASIC,
                                instances=config.basic_scaling.max_instances)
    return pb.ModuleVersion(version_id=version_id, scaling=pb.SCALING_AUTOMATIC)

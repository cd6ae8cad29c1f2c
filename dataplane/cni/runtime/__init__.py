"""The runtime side of CNI: a libcni-equivalent client (`CNIConfig`), config loading, the result
cache, and the lean exec path (thin plugin executables forwarding to a warm daemon).

The scenario runner and the `dataplane cni` commands use this API; see `client.py` for a tour.
"""

from dataplane.cni.runtime.cache import CachedAttachment, ResultCache
from dataplane.cni.runtime.client import CNIConfig, GCAttachment, RuntimeConf
from dataplane.cni.runtime.conf import (NetworkConfig, NetworkConfigList, conf_list_from_bytes,
                                        conf_list_from_conf, load_conf_list)
from dataplane.cni.runtime.errors import (ChainError, CNIRuntimeError, ConfigError, NotFoundError, PluginError,
                                          RuntimeClientError)

__all__ = [
    "CNIConfig", "CNIRuntimeError", "CachedAttachment", "ChainError", "ConfigError", "GCAttachment",
    "NetworkConfig", "NetworkConfigList", "NotFoundError", "PluginError", "ResultCache", "RuntimeClientError",
    "RuntimeConf", "conf_list_from_bytes", "conf_list_from_conf", "load_conf_list",
]

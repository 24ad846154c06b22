"""The supervisor's settings: declared once (settings.py), read from YAML and PGGIT_* variables
(loader.py), checked in one pass (validate.py, host.py for what looks at this machine), and
handed to the rest of the service as frozen records (model.py).

The names below are what the other modules import; the submodules are the implementation.
"""

from .loader import ENVIRONMENT, listener_config, load_config, resolve_config_path
from .model import (
    DEFAULT_BASE_DELAY,
    DEFAULT_DRILL_USER,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_KILL_GRACE,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_DELAY,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WORKER_TIMEOUT,
    DEFAULT_WORKERS,
    Config,
    ConfigError,
    Database,
    Endpoint,
    NotificationConfig,
    RetryConfig,
    ToolConfig,
    Tools,
    config_summary,
    database_name,
    default_tool,
)
from .settings import DEFAULT_CONFIG_PATH, LOG_LEVELS, builtin_tools, environment_variables, tool_names

TOOL_NAMES = tool_names()
BUILTIN_TOOLS = tuple(section.name for section in builtin_tools())
ENV_OVERRIDES = environment_variables()  # variable -> top-level key; the DSN is the listener's argument

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_BASE_DELAY",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DRILL_USER",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_KILL_GRACE",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WORKERS",
    "DEFAULT_WORKER_TIMEOUT",
    "ENVIRONMENT",
    "ENV_OVERRIDES",
    "LOG_LEVELS",
    "TOOL_NAMES",
    "Config",
    "ConfigError",
    "Database",
    "Endpoint",
    "NotificationConfig",
    "RetryConfig",
    "ToolConfig",
    "Tools",
    "config_summary",
    "database_name",
    "default_tool",
    "listener_config",
    "load_config",
    "resolve_config_path",
]

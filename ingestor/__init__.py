"""ingestor: a self-hosted file-drop bulk ingestion worker for Klaviyo.

The supported API is the names in ``__all__``; everything else is internal and may change.
They are imported on first use (PEP 562), so ``import ingestor`` costs nothing and a command
loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name → the module that defines it
_EXPORTS = {
    "ApiKey": "ingestor.config",
    "ConfigError": "ingestor.errors",
    "FileState": "ingestor.ledger",
    "IngestorError": "ingestor.errors",
    "Pipeline": "ingestor.pipeline",
    "Service": "ingestor.worker.service",
    "Settings": "ingestor.config",
    "Simulator": "ingestor.simulator",
    "check_service_settings": "ingestor.service_config",
    "ingest_folder_once": "ingestor.app",
    "load_service_settings": "ingestor.service_config",
    "validate_path": "ingestor.validation",
}

__all__ = [
    "ApiKey",
    "ConfigError",
    "FileState",
    "IngestorError",
    "Pipeline",
    "Service",
    "Settings",
    "Simulator",
    "__version__",
    "check_service_settings",
    "ingest_folder_once",
    "load_service_settings",
    "validate_path",
]

if TYPE_CHECKING:
    from ingestor.app import ingest_folder_once
    from ingestor.config import ApiKey, Settings
    from ingestor.errors import ConfigError, IngestorError
    from ingestor.ledger import FileState
    from ingestor.pipeline import Pipeline
    from ingestor.service_config import check_service_settings, load_service_settings
    from ingestor.simulator import Simulator
    from ingestor.validation import validate_path
    from ingestor.worker.service import Service


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ingestor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

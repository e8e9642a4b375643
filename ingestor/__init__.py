"""ingestor: a file-drop bulk ingestion worker for Klaviyo custom objects."""

__version__ = "0.1.0"

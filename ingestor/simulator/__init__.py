"""A Klaviyo API stand-in for the demo, tests and benchmarks (never a real Klaviyo host)."""

from ingestor.simulator.server import Simulator
from ingestor.simulator.state import (
    DATA_SOURCE_LIMITS,
    GUIDE_BULK_LIMITS,
    SPEC_BULK_LIMITS,
    Faults,
)

__all__ = ["DATA_SOURCE_LIMITS", "GUIDE_BULK_LIMITS", "SPEC_BULK_LIMITS", "Faults", "Simulator"]

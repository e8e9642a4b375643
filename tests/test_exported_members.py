"""The public face: the names in ``ingestor.__all__`` exist, come from ingestor itself, and
cost nothing until used (as httpx checks its own)."""

from __future__ import annotations

import subprocess
import sys

import ingestor


def test_every_exported_name_resolves_to_ingestors_own_object() -> None:
    for name in ingestor.__all__:
        value = getattr(ingestor, name)
        if name != "__version__":
            assert value.__module__.startswith("ingestor."), name
    assert ingestor.__all__ == sorted(ingestor.__all__)
    assert set(ingestor.__all__) == {"__version__", *ingestor._EXPORTS}


def test_importing_the_package_loads_nothing_else() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import ingestor, sys; "
         "print(sorted(m for m in sys.modules if m.startswith('ingestor')))"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert loaded.strip() == "['ingestor']"

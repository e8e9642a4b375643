"""The house's layer order (README, "Layout of the code"), checked on the source: a module
imports only from layers below its own, so there are no cycles between components and
nothing low knows anything high. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ingestor"

# Lowest first. A component is a top-level module or subpackage of ingestor.
LAYERS: list[set[str]] = [
    {"errors", "kinds", "records", "crashpoints", "toml_reader", "logs"},
    {"config", "dropfile", "http", "turns"},
    {"layout", "parsers", "mapping", "batcher", "ledger", "ratelimit", "klaviyo"},
    {"identity", "reports", "sender", "discovery", "simulator", "validation"},
    {"notify", "sftp", "pipeline"},
    {"service_config"},
    {"app", "worker", "cli_common"},
    {"service_cli"},
    {"cli"},
    {"ingestor"},  # the package's public face (__init__): names from anywhere, loaded lazily
]


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ingestor"


def imports() -> dict[str, set[str]]:
    """Each component → the other components its modules import."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(p for p in relative.parts if p != "__init__")
        own = component(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "ingestor":  # from ingestor import crashpoints
                    names = [f"ingestor.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name == "ingestor" or name.startswith("ingestor."):
                    other = component(name)
                    if other not in (own, "__version__"):
                        found.setdefault(own, set()).add(other)
    return found


def test_every_component_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    present = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    present = {name for name in present if not name.startswith(("_", "."))} | {"ingestor"}
    present -= {"py", "typed"}
    missing = {name for name in present if name not in layered and name != "sample_drop"}
    assert missing == set(), f"give these a layer in LAYERS and the README: {missing}"


def test_no_component_imports_from_its_own_layer_or_above() -> None:
    level = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    upward = sorted(
        f"{low} imports {high}"
        for low, highs in imports().items()
        for high in highs
        if high in level and level[high] >= level[low]
    )
    assert upward == []

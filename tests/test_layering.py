"""The package's layering, as docs/design-notes.md states it: models never
import the trainer, the mesh builder or jax.distributed; inference and eval
load models without the trainer; infer never imports eval (eval uses
infer's rollout, one way only); data does not import infer. A violating
import fails here, named.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxworld"

# (package whose modules are checked, imports they must not make)
RULES = [
    ("models", ("jaxworld.train", "jaxworld.infer", "jaxworld.eval",
                "jaxworld.runs", "jaxworld.data", "jaxworld.parallel.mesh",
                "jaxworld.parallel.distributed", "jaxworld.parallel.batch",
                "jaxworld.parallel.sharding")),
    ("infer", ("jaxworld.train", "jaxworld.eval")),
    ("eval", ("jaxworld.train",)),
    ("runs", ("jaxworld.train", "jaxworld.infer", "jaxworld.eval")),
    ("data", ("jaxworld.infer", "jaxworld.train", "jaxworld.models")),
    ("parallel", ("jaxworld.models", "jaxworld.train", "jaxworld.infer")),
    # play serves what infer imagines; a bundle needs none of the rest.
    ("play", ("jaxworld.train", "jaxworld.eval")),
]


def _imports(path: Path) -> set[str]:
  """Absolute module names `path` imports (also inside functions)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


@pytest.mark.parametrize("package,forbidden", RULES,
                         ids=[package for package, _ in RULES])
def test_layering(package, forbidden):
  files = sorted((PACKAGE / package).glob("*.py"))
  assert files, package
  bad = [f"{path.relative_to(PACKAGE.parent)} imports {name}"
         for path in files for name in sorted(_imports(path))
         if name.startswith(forbidden)]
  assert not bad, "\n".join(bad)

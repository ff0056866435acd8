"""Clear outputs, execution counts and run metadata of the cookbook notebooks (outputs are never committed).

python scripts/clear_notebooks.py            # rewrite cookbooks/*.ipynb without outputs
python scripts/clear_notebooks.py --check    # exit 1 if any notebook has outputs (for CI / pre-commit)
python scripts/clear_notebooks.py a.ipynb    # only these files
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clear(nb: object) -> bool:
    """Strip outputs in place; returns True when something was removed."""
    changed = False
    for cell in nb.cells:  # type: ignore[attr-defined]
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            changed = True
        cell["outputs"] = []
        cell["execution_count"] = None
        if "execution" in cell.get("metadata", {}):
            del cell["metadata"]["execution"]
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: cookbooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report notebooks that have outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "cookbooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if clear(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    for path in dirty:
        print(f"{'has outputs' if args.check else 'cleared'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())

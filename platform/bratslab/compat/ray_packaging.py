"""What Ray would upload as a job's ``working_dir`` (checked against ray 2.60.x).

Ray walks the folder with its own exclusion rules: the runtime env's ``excludes`` (gitignore
syntax) plus every ``.gitignore`` and ``.rayignore`` on the way (unless
``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``). Reusing that walk (``ray._private.runtime_env.packaging
._dir_travel`` and ``_get_excludes``) makes the size bratslab reports the size Ray sends. Public
replacement: none (the SDK only logs the package size after uploading it).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def package_files(root: Path, excludes: Sequence[str]) -> dict[Path, int]:
    """Every file Ray would pack from ``root`` with ``excludes``, mapped to its size in bytes."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = root.absolute()
    sizes: dict[Path, int] = {}

    def add(path: Path) -> None:
        if path.is_file() and not path.is_symlink():
            sizes[path.relative_to(root)] = path.stat().st_size

    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    # Ray logs each ignore file it honours at INFO; that is not news for the user.
    quiet = logging.getLogger(__name__)
    quiet.setLevel(logging.WARNING)
    _dir_travel(root, [_get_excludes(root, list(excludes))], add, include_gitignore, logger=quiet)
    return sizes


def biggest_folders(sizes: dict[Path, int], n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` top-level entries of a package that weigh most: ``[(name, bytes), ...]``."""
    totals: Counter[str] = Counter()
    for rel, size in sizes.items():
        totals[rel.parts[0] if len(rel.parts) > 1 else str(rel)] += size
    return totals.most_common(n)

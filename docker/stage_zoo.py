"""Copy the installed zoo under a models root and write the models file that registers it.

The guard registers models by their path relative to `TERDGUARD_MODELS_ROOT`. In the
images that root is `/models`, outside site-packages where the zoo ships, so the image
build runs this script once: it copies each zoo model to `<models root>/zoo/<name>` and
lists the copies in a JSON models file for `TERDGUARD_MODELS_FILE`. The reversed
triggers shipped with the package still match the copies, because a model's fingerprint
covers its weights and configs but not its folder.

Usage: python stage_zoo.py --models-root /models --models-file /etc/terdguard/zoo-models.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from terdguard.core.zoo import zoo_model_dirs

ZOO_FOLDER = "zoo"


def stage_zoo(models_root: Path, models_file: Path, folder: str = ZOO_FOLDER) -> list[dict[str, str]]:
    """Copy every built zoo model to `models_root/folder/<name>` and write `models_file`. Returns its entries."""
    entries = []
    for name, model_dir in zoo_model_dirs().items():
        shutil.copytree(model_dir, models_root / folder / name)
        entries.append({"name": name, "source": f"{folder}/{name}"})

    models_file.parent.mkdir(parents=True, exist_ok=True)
    models_file.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy the installed zoo under a models root for the guard images.")
    parser.add_argument("--models-root", type=Path, required=True, help="the image's TERDGUARD_MODELS_ROOT")
    parser.add_argument("--models-file", type=Path, required=True, help="JSON models file to write")
    parser.add_argument("--folder", default=ZOO_FOLDER, help="subfolder of the models root (default: %(default)s)")
    args = parser.parse_args(argv)

    entries = stage_zoo(args.models_root, args.models_file, args.folder)
    if not entries:
        print("stage_zoo: no zoo models found in the installed package; build them with 'terdguard zoo build' "
              "before building the image", file=sys.stderr)
        return 1
    print(f"stage_zoo: copied {len(entries)} zoo models to {args.models_root / args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write configs/gpu-cluster.yaml into cluster/rayservice.yaml as its serveConfigV2 block.

    python cluster/sync_rayservice.py          # rewrite the block
    python cluster/sync_rayservice.py --check  # exit 1 if the block differs from the config (CI, tests)

The Serve config stays the one source: KubeRay gets the same text `serve deploy` gets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "gpu-cluster.yaml"
RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"
KEY = "  serveConfigV2: |"
INDENT = "    "  # the block's lines sit under `spec:` (2) + the key's own indent (2)


def render(manifest: str, config: str) -> str:
    """`manifest` with the serveConfigV2 block replaced by `config`, indented as a YAML literal block."""
    lines = manifest.splitlines()
    try:
        start = lines.index(KEY) + 1
    except ValueError:
        raise ValueError(f"{RAYSERVICE}: no line {KEY!r}") from None
    end = start
    while end < len(lines) and (lines[end].startswith(INDENT) or not lines[end].strip()):
        end += 1
    while end > start and not lines[end - 1].strip():  # keep the blank lines that follow the block
        end -= 1
    block = [INDENT + line if line.strip() else "" for line in config.splitlines()]
    return "\n".join(lines[:start] + block + lines[end:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text()
    wanted = render(current, CONFIG.read_text())
    if args.check:
        if current != wanted:
            print(f"{RAYSERVICE} is out of date: run python cluster/sync_rayservice.py", file=sys.stderr)
            return 1
        return 0
    RAYSERVICE.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

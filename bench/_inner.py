"""Run one measuring function inside the pod's network namespace and write its JSON result.

``python -m bench._inner module:function '<json kwargs>' <out.json>`` (started by ``bench._network``).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from bench import _common


def main() -> None:
    target, raw, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    module, func = target.split(":")
    result = getattr(importlib.import_module(module), func)(**json.loads(raw))
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    _common.main_guard(main)

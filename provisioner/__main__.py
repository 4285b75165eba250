"""The ``provisioner`` console script (also ``python -m provisioner``).

``provisioner run``, the start of every pod, goes straight to ``launch.run``: importing typer and
building the app's click commands is ~0.05 s of CPU on every start, spent before the first Vast call
(docs/performance.md §4). Every other command line, ``run --help`` included, goes to the typer app in
``cli.py``; both end through ``launch`` (the same messages and exit codes).
"""

from __future__ import annotations

import sys

from provisioner import launch


def main() -> None:
    launch.skip_httpx_cli()
    if sys.argv[1:] == ["run"]:
        launch.run()
        return
    from provisioner import cli  # noqa: PLC0415 - typer only for the commands that need it

    cli.app()


if __name__ == "__main__":
    main()

"""``python -m snnrun`` (e.g. ``torchrun --nproc-per-node=2 -m snnrun ...``) is the ``snnrun`` command."""

from .run.cli import main

main()

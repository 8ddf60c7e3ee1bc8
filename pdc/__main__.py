"""``python -m pdc`` is the ``pdc`` command."""

from pdc.cli import main

main()

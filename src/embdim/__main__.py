"""``python -m embdim ...``: the command line (also under launchers such as ``torchrun -m embdim``)."""

from embdim.cli import main

main()

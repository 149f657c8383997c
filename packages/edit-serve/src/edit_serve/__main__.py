"""``python -m edit_serve`` = the ``edit-serve`` command."""

from edit_serve.cli import main

main()

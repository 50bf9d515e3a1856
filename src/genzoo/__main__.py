"""`python -m genzoo` runs the CLI."""

from genzoo.cli import main

main()

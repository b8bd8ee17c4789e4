"""`python -m forwardpass` is the `forwardpass` command."""

from forwardpass.cli import main

main()

"""``python -m custom`` is the same CLI as the ``dycon`` console script."""

from custom.cli import main

if __name__ == "__main__":
    main()

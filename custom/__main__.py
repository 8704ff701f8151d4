"""``python -m custom`` is the same CLI as the ``dycon`` console script."""

from .cli import main

if __name__ == "__main__":
    main()

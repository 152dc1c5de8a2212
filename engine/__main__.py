"""``python -m engine`` is the ``stashflow`` command."""

from engine.cli import main

if __name__ == "__main__":
    main()

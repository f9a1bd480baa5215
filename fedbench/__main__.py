"""``python -m fedbench`` is the same as the ``fedbench`` command."""

from fedbench.cli import main

if __name__ == "__main__":
    main()

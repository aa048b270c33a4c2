"""`python -m kubetune_cli`: the same as `kubectl kubetune`."""

from kubetune_cli.main import main

if __name__ == "__main__":
    main()

"""``python -m bratslab``: the same command line as the ``bratslab`` console script."""

from bratslab.app.main import main

if __name__ == "__main__":
    main()

"""`python -m dhserve.cli`: how the service starts its own processes and the tests run it."""

from dhserve.cli import main

if __name__ == "__main__":
    main()

"""``python -m cnnlab ...`` runs the ``cnnlab`` command (:mod:`cnnlab.cli`)."""

from cnnlab.cli import main

if __name__ == "__main__":
    main()

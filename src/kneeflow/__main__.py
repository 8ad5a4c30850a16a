"""``python -m kneeflow``: the ``kneeflow`` command (see :mod:`kneeflow.cli`)."""

from kneeflow.cli import main

main()

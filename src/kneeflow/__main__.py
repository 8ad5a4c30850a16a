"""``python -m kneeflow``: the ``kneeflow`` command (see :mod:`kneeflow.workflow.cli`)."""

from kneeflow.workflow.cli import main

main()

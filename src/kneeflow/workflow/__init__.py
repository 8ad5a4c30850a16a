"""The workflow's glue, apart from the science: the ``kneeflow`` command (:mod:`.cli`), the sample
sheet (:mod:`.samples`), the config schema and its defaults (:mod:`.schema`), provenance records and
code hashes (:mod:`.provenance`) and the runner of the cohort rules' scripts (:mod:`.rule`).

Nothing in the science modules imports from here.
"""

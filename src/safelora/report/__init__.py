"""Report stage (rules/aggregate.smk): the results table with intervals (`aggregate`) and the
figures (`figures`)."""

"""Weight analysis stage (rules/weights.smk): stable rank and alignment of ΔW (`weights`)."""

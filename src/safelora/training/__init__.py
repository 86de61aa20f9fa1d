"""Training stage (rules/data.smk's training set, rules/train.smk, rules/orthomerge.smk):
safety SFT (`sft`), the orthogonality regularizer (`ortho_reg`), OrthoMerge (`orthomerge`) and
model preparation (`models`)."""
